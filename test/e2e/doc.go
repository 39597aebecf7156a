// Package e2e holds dhpp's end-to-end tests against the real local cluster
// that test/e2e/cluster brings up. The tests carry the build tag e2e:
//
//	go test -tags e2e -v -timeout 60m ./test/e2e/
//
// See README.md in this directory.
package e2e
