// Package deploy holds the ways unstuck is deployed, and the tests that
// check them against the code:
//
//	kubernetes/  a Deployment with unstuck as a native sidecar, and its ConfigMap
//	systemd/     unstuck.service
//
// The tests also build the binary exactly as the repository's Dockerfile
// does and run it, as the image's user, in an empty root directory; they
// check scripts/release.sh and the Makefile against the Dockerfile. The
// package has no code of its own.
//
// deploy is a module of its own (deploy/go.mod, which uses the repository's
// module through a replace directive), so that what its tests need, the
// Kubernetes API types, stays out of the product's go.mod and the image
// build. The repository's `./...` does not reach it: the README's test
// command runs it with `cd deploy`.
package deploy
