// The proxy the KEDA HTTP interceptor, the Knative activator and the OpenFaaS gateway are
// built on: Go's httputil.ReverseProxy, with nothing else. benches/proxy_cpu.sh's peer.
//
// Usage: go_proxy LISTEN_ADDR UPSTREAM_ADDR (threads: GOMAXPROCS)
package main

import (
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	upstream, err := url.Parse("http://" + os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	proxy.Transport = &http.Transport{
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
	}
	server := &http.Server{Addr: os.Args[1], Handler: proxy}
	log.Fatal(server.ListenAndServe())
}
