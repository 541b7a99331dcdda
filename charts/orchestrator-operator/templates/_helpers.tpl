{{/* Full name of the release's objects. */}}
{{- define "orchestrator-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting the operator's pods. */}}
{{- define "orchestrator-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "orchestrator-operator.labels" -}}
{{ include "orchestrator-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Name of the ServiceAccount. */}}
{{- define "orchestrator-operator.serviceAccountName" -}}
{{- default (include "orchestrator-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Name of the leader-election Lease. */}}
{{- define "orchestrator-operator.leaseName" -}}
{{- include "orchestrator-operator.fullname" . -}}
{{- end -}}
