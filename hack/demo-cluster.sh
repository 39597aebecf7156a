#!/usr/bin/env bash
# The README's first command: the project's own three-node Kubernetes cluster
# on this machine, dhpp installed from deploy/ (local overlay), and a
# StatefulSet whose replicas each get a volume on their own node's disk.
#
#   hack/demo-cluster.sh up     bring it all up (cold: ~20 min of tool builds; warm: ~1 min)
#   hack/demo-cluster.sh down   remove the cluster and everything it made
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (namespaces, mounts, loop devices, iptables)" >&2; exit 1; }
cache="${DHPP_CACHE:-$HOME/.cache/dhpp}"
export KUBECONFIG="$PWD/_output/cluster/kubeconfig"
# The cluster runs $DHPP_K8S_VERSION, or the harness's default.
version="$(go run ./test/e2e/cmd/dhpp-cluster version)"
kubectl() { "$cache/bin/kubernetes-$version/kubectl" "$@"; }

case "${1:-up}" in
down)
	go run ./test/e2e/cmd/dhpp-cluster down
	exit 0 ;;
up) ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

go run ./test/e2e/cmd/dhpp-cluster up --install-dhpp
# On a cluster that was already up, make sure dhpp is installed (idempotent).
kubectl apply -k deploy/kustomize/overlays/local >/dev/null
kubectl -n dhpp-system rollout status daemonset/dhpp-node --timeout=5m
kubectl apply -f deploy/examples/statefulset.yaml
echo "== waiting for the StatefulSet (3 replicas, one per node)"
kubectl -n dhpp-demo rollout status statefulset/demo --timeout=5m
echo
echo "kubeconfig: $KUBECONFIG"
echo "kubectl:    $cache/bin/kubernetes-$version/kubectl"
echo
echo "\$ kubectl get pvc,pv -n dhpp-demo"
kubectl get pvc,pv -n dhpp-demo
echo
echo "\$ kubectl get pv -o custom-columns=PV:.metadata.name,CLAIM:.spec.claimRef.name,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0],POOL:.spec.csi.volumeAttributes.dhpp\\.io/pool,BACKEND:.spec.csi.volumeAttributes.dhpp\\.io/backend"
kubectl get pv -o custom-columns='PV:.metadata.name,CLAIM:.spec.claimRef.name,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0],POOL:.spec.csi.volumeAttributes.dhpp\.io/pool,BACKEND:.spec.csi.volumeAttributes.dhpp\.io/backend'
echo
echo "\$ kubectl get pods -n dhpp-demo -o wide"
kubectl get pods -n dhpp-demo -o wide
echo
echo "Tear down with: make demo-down"
