{{- define "cni.name" -}}
{{- .Values.resourceName | default "istio-cni-node" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cni.serviceAccountName" -}}
{{- .Values.serviceAccountName | default "istio-cni" -}}
{{- end -}}

{{- define "cni.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cni.selectorLabels" -}}
k8s-app: istio-cni-node
app.kubernetes.io/name: mesh-cni
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cni.labels" -}}
{{ include "cni.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: ambient-mesh
helm.sh/chart: {{ include "cni.chart" . }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cni.image" -}}
{{- if .Values.image -}}
{{- .Values.image -}}
{{- else -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | default .Chart.AppVersion -}}
{{- if $hub }}{{ printf "%s/mesh-cni:%v" (trimSuffix "/" $hub) $tag }}{{ else }}{{ printf "mesh-cni:%v" $tag }}{{ end -}}
{{- end -}}
{{- end -}}

{{- define "cni.xdsAddress" -}}
{{- $ns := .Values.istioNamespace | default .Values.global.istioNamespace | default .Release.Namespace -}}
{{- .Values.xdsAddress | default (printf "istiod.%s.svc:15012" $ns) -}}
{{- end -}}

{{/* The host's CNI binary directory: the value, else GKE's or the usual one (as Istio's chart). */}}
{{- define "cni.binDir" -}}
{{- if .Values.cni.binDir -}}
{{- .Values.cni.binDir -}}
{{- else if contains "-gke" .Capabilities.KubeVersion.GitVersion -}}
/home/kubernetes/bin
{{- else -}}
/opt/cni/bin
{{- end -}}
{{- end -}}
