# Pinned versions of the local cluster's components. Changing any of these
# changes the cache key, so `hack/cluster build` rebuilds into a new folder.
# shellcheck disable=SC2034
KUBERNETES_VERSION="v1.36.3"   # k8s.io/kubernetes; staging modules pinned to v0.36.3
ETCD_VERSION="v3.6.8"          # go.etcd.io/etcd/server/v3, the version k8s 1.36.3 pins
KWOK_VERSION="v0.8.0"          # sigs.k8s.io/kwok
HELM_VERSION="v3.22.0"         # helm.sh/helm/v3
# Bumped by hand when the build recipe itself changes.
CLUSTER_BUILD_RECIPE="1"
