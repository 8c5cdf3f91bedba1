{{/* Name of the objects (Istio's `istiod`). */}}
{{- define "istiod-lite.name" -}}
{{- .Values.resourceName | default "istiod" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "istiod-lite.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "istiod-lite.selectorLabels" -}}
app: istiod
app.kubernetes.io/name: istiod-lite
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "istiod-lite.labels" -}}
{{ include "istiod-lite.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: control-plane
app.kubernetes.io/part-of: ambient-mesh
helm.sh/chart: {{ include "istiod-lite.chart" . }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* `<hub>/<name>:<tag>` with per-chart and global fallbacks; an explicit image wins. */}}
{{- define "istiod-lite.imageRef" -}}
{{- $ctx := index . 0 -}}{{- $override := index . 1 -}}{{- $name := index . 2 -}}
{{- if $override -}}
{{- $override -}}
{{- else -}}
{{- $hub := $ctx.Values.hub | default $ctx.Values.global.hub -}}
{{- $tag := $ctx.Values.tag | default $ctx.Values.global.tag | default $ctx.Chart.AppVersion -}}
{{- if $hub }}{{ printf "%s/%s:%v" (trimSuffix "/" $hub) $name $tag }}{{ else }}{{ printf "%s:%v" $name $tag }}{{ end -}}
{{- end -}}
{{- end -}}

{{- define "istiod-lite.image" -}}
{{- include "istiod-lite.imageRef" (list . .Values.image "istiod-lite") -}}
{{- end -}}

{{- define "istiod-lite.waypointImage" -}}
{{- include "istiod-lite.imageRef" (list . .Values.waypoint.image "waypoint") -}}
{{- end -}}

{{- define "istiod-lite.rootNamespace" -}}
{{- .Values.rootNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "istiod-lite.discoveryAddress" -}}
{{- .Values.waypoint.discoveryAddress | default (printf "%s.%s.svc:15012" (include "istiod-lite.name" .) .Release.Namespace) -}}
{{- end -}}

{{/* The root published in istio-ca-root-cert, if the chart knows it. */}}
{{- define "istiod-lite.rootCert" -}}
{{- if .Values.ca.rootCert -}}
{{- .Values.ca.rootCert -}}
{{- else if .Values.ca.cacerts.create -}}
{{- .Values.ca.cacerts.rootCert -}}
{{- end -}}
{{- end -}}
