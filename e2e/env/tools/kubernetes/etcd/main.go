// Command etcd is etcd's own server entry point, built from the etcd release that
// k8s.io/kubernetes itself depends on, so the apiserver and etcd always agree.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
