{{/* Name of the release's objects, at most 63 characters. */}}
{{- define "airfed-node.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "airfed-node.organization" -}}
{{- .Values.organization | default .Release.Name -}}
{{- end -}}

{{- define "airfed-node.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "airfed-node.commonLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
airfed.dev/organization: {{ include "airfed-node.organization" . | quote }}
{{- end -}}

{{- define "airfed-node.labels" -}}
{{ include "airfed-node.commonLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "airfed-node.launcherLabels" -}}
{{ include "airfed-node.commonLabels" . }}
app.kubernetes.io/component: task-launcher
{{- end -}}

{{- define "airfed-node.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "airfed-node.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "airfed-node.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "airfed-node.taskLauncherName" -}}
{{- .Values.taskPods.serviceAccountName | default (printf "%s-task-launcher" (include "airfed-node.fullname" .)) -}}
{{- end -}}

{{- define "airfed-node.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" .Release.Name) -}}
{{- end -}}

{{- define "airfed-node.identitySecret" -}}
{{- .Values.identity.secretName | default (printf "%s-identity" .Release.Name) -}}
{{- end -}}

{{- define "airfed-node.masterKeySecret" -}}
{{- .Values.masterKey.secretName | default (printf "%s-master-key" .Release.Name) -}}
{{- end -}}

{{- define "airfed-node.networkConfigMap" -}}
{{- if .Values.network.config -}}
{{- printf "%s-network" (include "airfed-node.fullname" .) -}}
{{- else -}}
{{- required "network.existingConfigMap or network.config is required" .Values.network.existingConfigMap -}}
{{- end -}}
{{- end -}}

{{- define "airfed-node.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-store" (include "airfed-node.fullname" .)) -}}
{{- end -}}
