// Package kube is dhpp-driver's Kubernetes side: an optional API connection,
// and the fencing signals operators see on the Node object — an Event when a
// pool is fenced or recovers, a label per fenced pool
// (`kubectl get nodes -l pool.dhpp.io/default=fenced`), a DhppPoolsHealthy
// condition, and manual unfencing through an annotation
// (`kubectl annotate node N unfence.dhpp.io/default=now`).
//
// The driver works without a cluster (unit tests, the README demo): Connect
// then returns no client and fencing is only visible through CSI and metrics.
package kube

import (
	"errors"
	"fmt"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Client API rate: the driver patches its own Node and posts an Event per
// fencing change, a handful of calls per incident, and writes its pools'
// DhppPool status at most once per pool per 30 s (pkg/poolstatus). Low limits keep a
// flapping disk on many nodes from loading the API server.
const (
	clientQPS   = 5
	clientBurst = 10
)

// Connect returns the API (core/v1 only) for kubeconfig, or for the in-cluster config
// (service account) when kubeconfig is empty. Outside a cluster with no
// kubeconfig it logs that once and returns (nil, nil): the driver runs
// without Kubernetes. A kubeconfig that was asked for but cannot be loaded
// is an error, not a silent fallback.
func Connect(kubeconfig string) (API, error) {
	cfg, err := RESTConfig(kubeconfig)
	if err != nil || cfg == nil {
		return nil, err
	}
	return NewAPI(cfg)
}

// NewAPI returns the API on cfg (from RESTConfig).
func NewAPI(cfg *rest.Config) (API, error) {
	c, err := newRESTAPI(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	klog.InfoS("Kubernetes API configured", "host", cfg.Host)
	return c, nil
}

// RESTConfig is the driver's client configuration (user agent, rate
// limits) for kubeconfig or the in-cluster service account; (nil, nil)
// outside a cluster with no kubeconfig, as for Connect.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load --kubeconfig %s: %w", kubeconfig, err)
		}
	} else {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			klog.InfoS("No Kubernetes API configured (not in a cluster, no --kubeconfig): running without node Events, labels and conditions for fenced pools")
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config: %w", err)
		}
	}
	cfg.UserAgent = "dhpp-driver/" + dhpp.Version
	cfg.QPS, cfg.Burst = clientQPS, clientBurst
	return cfg, nil
}
