// Command dhpp-cri is the small part of crictl the local e2e cluster needs:
// list pod sandboxes, and stop and remove all of them so that the CNI plugins
// release their addresses and every container shim exits before containerd
// is stopped.
//
//	dhpp-cri -endpoint unix:///path/containerd.sock pods
//	dhpp-cri -endpoint unix:///path/containerd.sock stop-all
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "CRI endpoint, unix:///path/to/containerd.sock")
	timeout := flag.Duration("timeout", 2*time.Minute, "overall deadline")
	flag.Parse()
	if *endpoint == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: dhpp-cri -endpoint unix:///SOCK pods|stop-all")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *endpoint, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "dhpp-cri:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, verb string) error {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect %s: %w", endpoint, err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	switch verb {
	case "pods":
		for _, p := range pods.Items {
			fmt.Printf("%s\t%s/%s\t%s\n", p.Id, p.Metadata.GetNamespace(), p.Metadata.GetName(), p.State)
		}
		return nil
	case "stop-all":
		return stopAll(ctx, rt, pods.Items)
	default:
		return fmt.Errorf("unknown verb %q", verb)
	}
}

// stopAll stops every sandbox (which stops its containers and runs CNI DEL)
// and then removes it. Every sandbox is tried even if one fails, so a single
// stuck pod does not leave the others running; the first error is returned.
func stopAll(ctx context.Context, rt runtimeapi.RuntimeServiceClient, pods []*runtimeapi.PodSandbox) error {
	var first error
	for _, p := range pods {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil && first == nil {
			first = fmt.Errorf("stop sandbox %s: %w", p.Id, err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil && first == nil {
			first = fmt.Errorf("remove sandbox %s: %w", p.Id, err)
		}
	}
	fmt.Printf("stopped %d pod sandboxes\n", len(pods))
	return first
}
