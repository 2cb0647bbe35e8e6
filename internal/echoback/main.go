// Command echoback is the backend of the router's host-level tests: a
// job that says who it is over HTTP, echoes TCP and UDP, and echoes the
// bytes of an upgraded HTTP connection (as a websocket echo would).
//
//	echoback [--name NAME] [--http :8080] [--api :8081] [--tcp :9000] [--udp :9001]
//	echoback --get URL
//	echoback --resolve NAME
//
// HTTP answers "<service> <name> <local address> <path>\n" and the
// request's X-Forwarded-* and X-Request-Id as headers; /slow?ms=N answers after
// N ms (at most 60 s); /uid_map answers its /proc/self/uid_map (the user
// namespace it runs in); a request with "Connection: Upgrade" gets 101 and
// an echo of its bytes. UDP replies "<name> <payload>". With --get it is
// a client instead: it prints the body of one GET of URL and exits, 1 if
// the request failed or did not answer 200. With --resolve it prints the
// addresses NAME resolves to, one a line, as the job's resolver answers
// (A and AAAA).
package main

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	name := flag.String("name", cmp.Or(os.Getenv("ECHOBACK_NAME"), randomName()), "name in every answer (default: $ECHOBACK_NAME, else random)")
	httpAddr := flag.String("http", "", "address of the \"web\" HTTP service")
	apiAddr := flag.String("api", "", "address of the \"api\" HTTP service")
	tcpAddr := flag.String("tcp", "", "address of the TCP echo")
	udpAddr := flag.String("udp", "", "address of the UDP echo")
	get := flag.String("get", "", "GET this URL, print the body and exit")
	resolve := flag.String("resolve", "", "print the addresses of this name and exit")
	flag.Parse()
	if *get != "" {
		os.Exit(fetch(*get))
	}
	if *resolve != "" {
		ips, err := net.LookupIP(*resolve)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, ip := range ips {
			fmt.Println(ip)
		}
		os.Exit(0)
	}
	if *httpAddr != "" {
		go serveHTTP(*httpAddr, "web", *name)
	}
	if *apiAddr != "" {
		go serveHTTP(*apiAddr, "api", *name)
	}
	if *tcpAddr != "" {
		go serveTCP(*tcpAddr)
	}
	if *udpAddr != "" {
		go serveUDP(*udpAddr, *name)
	}
	select {}
}

func serveHTTP(addr, service, name string) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			upgrade(w)
			return
		}
		if r.URL.Path == "/slow" {
			ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
			time.Sleep(time.Duration(min(ms, 60000)) * time.Millisecond)
		}
		if r.URL.Path == "/uid_map" {
			// Whose IDs the server's are on its host: a test's view of
			// the user namespace it runs in.
			data, err := os.ReadFile("/proc/self/uid_map")
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Write(data)
			return
		}
		w.Header().Set("X-Seen-Forwarded-For", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-Forwarded-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-Request-Id", r.Header.Get("X-Request-Id"))
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "%s %s %s %s\n", service, name, local, r.URL.Path)
	})
	log.Printf("%s serving %s on %s", name, service, addr)
	log.Fatal(http.ListenAndServe(addr, h))
}

func randomName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// upgrade answers 101 and echoes the connection's bytes.
func upgrade(w http.ResponseWriter) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	rw.Flush()
	io.Copy(conn, rw.Reader)
}

func serveTCP(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			io.Copy(c, bufio.NewReader(c))
		}()
	}
}

func serveUDP(addr, name string) {
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			log.Fatal(err)
		}
		c.WriteTo(append([]byte(name+" "), buf[:n]...), from)
	}
}

// fetch prints the body of a GET of url and returns the exit code.
func fetch(url string) int {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}
