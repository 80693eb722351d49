{{- define "godwit.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "godwit.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "godwit.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "godwit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "godwit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "godwit.etcd" -}}
{{- required "etcd.endpoints must list at least one etcd URL" (join "," .Values.etcd.endpoints) -}}
{{- end -}}

{{/* Volumes every godwit pod mounts: the KEK, scratch space, optional staging. */}}
{{- define "godwit.volumes" -}}
- name: kek
  secret:
    secretName: {{ required "kek.existingSecret must name the Secret holding the key-encryption key (godwit keys generate --out kek; kubectl create secret generic NAME --from-file=kek=./kek)" .Values.kek.existingSecret }}
    defaultMode: 0400
    items:
      - key: {{ .Values.kek.key }}
        path: kek
- name: tmp
  emptyDir: {}
{{- if .Values.staging.persistentVolumeClaim }}
- name: staging
  persistentVolumeClaim:
    claimName: {{ .Values.staging.persistentVolumeClaim }}
{{- end }}
{{- end -}}

{{- define "godwit.volumeMounts" -}}
- name: kek
  mountPath: /etc/godwit/kek
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.staging.persistentVolumeClaim }}
- name: staging
  mountPath: {{ .Values.staging.mountPath }}
{{- end }}
{{- end -}}

{{- define "godwit.envFrom" -}}
{{- if .Values.s3.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.s3.existingSecret }}
{{- end }}
{{- end -}}
