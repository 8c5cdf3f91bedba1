{{- define "ztunnel.name" -}}
{{- .Values.resourceName | default "ztunnel" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ztunnel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ztunnel.selectorLabels" -}}
app: ztunnel
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ztunnel.labels" -}}
{{ include "ztunnel.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: data-plane
app.kubernetes.io/part-of: ambient-mesh
helm.sh/chart: {{ include "ztunnel.chart" . }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ztunnel.image" -}}
{{- if .Values.image -}}
{{- .Values.image -}}
{{- else -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | default .Chart.AppVersion -}}
{{- if $hub }}{{ printf "%s/ztunnel:%v" (trimSuffix "/" $hub) $tag }}{{ else }}{{ printf "ztunnel:%v" $tag }}{{ end -}}
{{- end -}}
{{- end -}}

{{- define "ztunnel.istioNamespace" -}}
{{- .Values.istioNamespace | default .Values.global.istioNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "ztunnel.xdsAddress" -}}
{{- .Values.xdsAddress | default (printf "istiod.%s.svc:15012" (include "ztunnel.istioNamespace" .)) -}}
{{- end -}}

{{- define "ztunnel.caAddress" -}}
{{- .Values.caAddress | default (include "ztunnel.xdsAddress" .) -}}
{{- end -}}
