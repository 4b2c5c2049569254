package proxy

import (
	"github.com/valyala/fasthttp"
)

// checkRequest looks at a request fasthttp has parsed, before anything of
// it is forwarded, and returns the 4xx it must get instead (0: forward it)
// and the Refuse* reason to count.
//
// TODO(issue 11): smuggling and malformed input.
func checkRequest(req *fasthttp.Request) (status int, reason string) {
	return 0, ""
}

// requestError is fasthttp's ErrorHandler: a request it could not read
// (malformed, too large, too slow) gets its 4xx here, is logged and
// counted; fasthttp then closes the connection.
func (s *Server) requestError(ctx *fasthttp.RequestCtx, err error) {
	code, reason := fasthttp.StatusBadRequest, RefuseBadRequest
	s.refuse(ctx, code, reason, err)
}

// refuse answers a request unstuck will not forward with code, closes the
// app connection afterwards (its framing may be in doubt), and logs and
// counts it under reason.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, code int, reason string, err error) {
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetBodyString(fasthttp.StatusMessage(code) + "\n")
	ctx.SetConnectionClose()
	s.obs.Refused(reason)
}
