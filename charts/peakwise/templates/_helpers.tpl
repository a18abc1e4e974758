{{/* Names and labels. */}}

{{- define "peakwise.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peakwise.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "peakwise.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peakwise.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peakwise.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "peakwise.labels" -}}
helm.sh/chart: {{ include "peakwise.chart" . }}
{{ include "peakwise.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: peakwise
{{- end }}

{{- define "peakwise.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "peakwise.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "peakwise.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces that get the operator's namespaced Roles when watchNamespaces is set. */}}
{{- define "peakwise.eventNamespaces" -}}
{{- $out := list }}
{{- range .Values.watchNamespaces }}{{ $out = append $out . }}{{ end }}
{{- if not (has "default" $out) }}{{ $out = append $out "default" }}{{ end }}
{{- toJson $out }}
{{- end }}

{{/* Checks of combinations the schema cannot explain well. */}}
{{- define "peakwise.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled: true (without kopf peering several operators would act at once)" }}
{{- end }}
{{- if and (eq .Values.updateStrategy "RollingUpdate") (not .Values.peering.enabled) }}
{{- fail "updateStrategy RollingUpdate needs peering.enabled: true (an old and a new operator would act at once)" }}
{{- end }}
{{- if lt (int (sub .Values.peering.priority (mul (sub .Values.replicaCount 1) .Values.peering.priorityStep))) 0 }}
{{- fail "peering.priority - (replicaCount - 1) * peering.priorityStep must not be negative" }}
{{- end }}
{{- end }}

{{/*
The operator's permissions, in four sets: reads and writes, cluster-scoped and namespaced.
Cluster-scoped sets are always ClusterRoles; namespaced sets are ClusterRoles when all
namespaces are watched and Roles in each watched namespace otherwise.
*/}}

{{- define "peakwise.rules.clusterRead" -}}
# kopf: discover the served resources and the namespaces.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
# Pools and their nodes.
- apiGroups: ["peakwise.dev"]
  resources: ["gpunodepools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["peakwise.dev"]
  resources: ["gpunodepools/status"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if .Values.providers.karpenter.enabled }}
- apiGroups: ["karpenter.sh"]
  resources: ["nodepools"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if and .Values.providers.clusterAPI.enabled (not .Values.providers.clusterAPI.namespaces) }}
{{ include "peakwise.rules.clusterAPIRead" . }}
{{- end }}
{{- end }}

{{- define "peakwise.rules.clusterWrite" -}}
- apiGroups: ["peakwise.dev"]
  resources: ["gpunodepools"]
  verbs: ["patch"]
- apiGroups: ["peakwise.dev"]
  resources: ["gpunodepools/status"]
  verbs: ["patch", "update"]
{{- if .Values.providers.kwok.enabled }}
# The kwok provider: simulated nodes are Node objects the operator creates itself.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["create", "patch", "delete"]
{{- end }}
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["patch"]
{{- end }}
{{- if .Values.providers.karpenter.enabled }}
- apiGroups: ["karpenter.sh"]
  resources: ["nodepools"]
  verbs: ["patch"]
{{- end }}
{{- if and .Values.providers.clusterAPI.enabled (not .Values.providers.clusterAPI.namespaces) }}
{{ include "peakwise.rules.clusterAPIWrite" . }}
{{- end }}
{{- end }}

{{- define "peakwise.rules.namespacedRead" -}}
- apiGroups: ["peakwise.dev"]
  resources: ["inferencedeployments", "costbudgets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["peakwise.dev"]
  resources: ["inferencedeployments/status", "costbudgets/status"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# targetRef: the workloads Peakwise right-sizes, and the autoscalers that may already own
# them (reported, never written).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["get"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list"]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}

{{- define "peakwise.rules.namespacedWrite" -}}
# kopf keeps finalizers and progress annotations on the objects it handles.
- apiGroups: ["peakwise.dev"]
  resources: ["inferencedeployments", "costbudgets"]
  verbs: ["patch"]
- apiGroups: ["peakwise.dev"]
  resources: ["inferencedeployments/status", "costbudgets/status"]
  verbs: ["patch", "update"]
# The child Deployments, one per pool an InferenceDeployment runs in.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "update", "patch", "delete"]
# targetRef: replicas through the scale subresource only (never the template).
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["patch"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets/scale"]
  verbs: ["patch"]
{{ include "peakwise.rules.events" . }}
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{- define "peakwise.rules.events" -}}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "peakwise.rules.clusterAPIRead" -}}
- apiGroups: ["cluster.x-k8s.io"]
  resources: ["machinedeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["cluster.x-k8s.io"]
  resources: ["machinedeployments/scale"]
  verbs: ["get"]
{{- end }}

{{- define "peakwise.rules.clusterAPIWrite" -}}
- apiGroups: ["cluster.x-k8s.io"]
  resources: ["machinedeployments/scale"]
  verbs: ["patch", "update"]
{{- end }}
