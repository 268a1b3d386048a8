//go:build !linux

package server

import "net"

// writeMore writes b to c: MSG_MORE is Linux's.
func writeMore(c net.Conn, b []byte) error {
	_, err := c.Write(b)
	return err
}
