//go:build tools

// Package tools pins the upstream programs built from this module, so `go mod tidy`
// keeps their dependencies in go.mod / go.sum. (kwok and metrics-server are built with
// `go install pkg@version` from their own module graphs instead: kwok v0.7.x does not
// compile against the k8s.io v0.34 libraries kube-apiserver needs.)
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl" // fallback only: the machine's kubectl is used when present
)
