package server

import "net/http"

// cors answers CORS preflights and adds the CORS headers for the origins
// of Config.CORSOrigins. (Stub: to be written.)
func (s *Server) cors(next http.Handler) http.Handler { return next }
