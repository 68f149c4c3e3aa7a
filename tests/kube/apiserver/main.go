// Command kube-apiserver is the upstream Kubernetes API server, built from
// the k8s.io/kubernetes module for tollgate's tests (tests/kube/README.md).
// It does what cmd/kube-apiserver does: build the command, run it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
