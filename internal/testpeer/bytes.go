package testpeer

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"sync"
)

// maxBytes caps /bytes/N at 64 GiB.
const maxBytes = 64 << 30

// bytesSeed makes Bytes the same stream in every process.
var bytesSeed = [32]byte([]byte("unstuck testpeer /bytes/N seed.."))

// Bytes returns a reader of the first n bytes of a fixed pseudo-random
// stream (ChaCha8 with a fixed seed): what /bytes/n sends.
func Bytes(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(bytesSeed), n)
}

var bytesSums sync.Map // int64 -> string

// ExpectedBytesSha256 returns the hex sha256 of Bytes(n), the body of
// /bytes/n. It is computed once per n and remembered.
func ExpectedBytesSha256(n int64) string {
	if v, ok := bytesSums.Load(n); ok {
		return v.(string)
	}
	h := sha256.New()
	io.CopyBuffer(h, Bytes(n), make([]byte, 64<<10)) // neither side fails
	sum := hex.EncodeToString(h.Sum(nil))
	bytesSums.Store(n, sum)
	return sum
}
