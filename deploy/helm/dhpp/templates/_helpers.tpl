{{/* Labels on every object. The helm.sh/chart, managed-by, instance and
version labels are Helm's bookkeeping; the rest match the kustomize base. */}}
{{- define "dhpp.labels" -}}
app.kubernetes.io/name: dhpp
app.kubernetes.io/part-of: dhpp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Pod selector: fixed, because a DaemonSet's selector is immutable. */}}
{{- define "dhpp.selectorLabels" -}}
app.kubernetes.io/name: dhpp
app.kubernetes.io/component: node
{{- end }}

{{/* image REPO TAG-or-default */}}
{{- define "dhpp.image" -}}
{{- $img := index . 0 -}}
{{- $default := index . 1 -}}
{{ $img.repository }}:{{ $img.tag | default $default }}
{{- end }}

{{/* The ServiceAccount subject every binding names. */}}
{{- define "dhpp.subject" -}}
subjects:
  - kind: ServiceAccount
    name: dhpp-node
    namespace: {{ .Release.Namespace }}
{{- end }}
