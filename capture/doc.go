// Package capture installs and removes the nftables rules that redirect an
// app's outbound TCP connections to unstuck's capture listener (unstuck
// capture, run by an init container). It speaks netlink through
// github.com/google/nftables: no nft or iptables binary is needed.
//
// The rules live in a table of their own, inet unstuck, which Install
// replaces whole in one transaction: running it twice leaves the same
// rules, and Remove deletes the table and nothing else.
package capture
