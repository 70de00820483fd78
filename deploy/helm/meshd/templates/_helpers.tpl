{{/* Common labels. */}}
{{- define "meshd.labels" -}}
app.kubernetes.io/name: meshd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{- define "meshd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* autoscaling/v2 where served (1.23+), else v2beta2. */}}
{{- define "meshd.hpaApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}

{{/* policy/v1 where served (1.21+), else v1beta1. */}}
{{- define "meshd.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{- define "meshd.webhookName" -}}
{{ .Release.Name }}-sidecar-injector-{{ .Release.Namespace }}
{{- end -}}

{{- define "meshd.validatorName" -}}
{{ .Release.Name }}-validator-{{ .Release.Namespace }}
{{- end -}}

{{- define "meshd.xdsAddress" -}}
{{ .Values.serviceName }}.{{ .Release.Namespace }}.svc:{{ .Values.ports.xdsTLS }}
{{- end -}}

{{/*
The pod-level security settings of every pod the chart renders: with the container-level ones
below they pass Pod Security "restricted" (scripts/check-chart.sh checks every pod template).
*/}}
{{- define "meshd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
fsGroup: 1337
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security settings every meshd-managed container uses. */}}
{{- define "meshd.restrictedSecurityContext" -}}
runAsUser: 1337
runAsGroup: 1337
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
A stock Envoy gateway: init container `meshd bootstrap --registry kubernetes --node-type router`
writes the bootstrap (ADS to meshd's 15012 with the pod's projected token), then Envoy runs it.
Args: dict "root" $ "gw" .Values.ingressGateway
*/}}
{{- define "meshd.gateway" -}}
{{- $root := .root -}}
{{- $gw := .gw -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $gw.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "meshd.labels" $root | nindent 4 }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $gw.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "meshd.labels" $root | nindent 4 }}
    {{- toYaml $gw.labels | nindent 4 }}
spec:
  {{- if not (and $gw.autoscaling $gw.autoscaling.enabled) }}
  replicas: {{ $gw.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- toYaml $gw.labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- toYaml $gw.labels | nindent 8 }}
        app: {{ $gw.name }}
        sidecar.istio.io/inject: "false"
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "15090"
        prometheus.io/path: /stats/prometheus
    spec:
      serviceAccountName: {{ $gw.name }}
      # Envoy never calls the Kubernetes API; meshd authenticates it by the projected
      # istio-token below.
      automountServiceAccountToken: false
      securityContext:
        {{- include "meshd.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      initContainers:
        - name: meshd-bootstrap
          image: {{ include "meshd.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [meshd]
          args:
            - bootstrap
            - --registry
            - kubernetes
            - --node-type
            - router
            - --workload
            - $(POD_NAME).$(POD_NAMESPACE)
            - --pod-ip
            - $(POD_IP)
            - --service-account
            - $(SERVICE_ACCOUNT)
            - --xds-address
            - {{ include "meshd.xdsAddress" $root }}
            - --out
            - /etc/meshd/proxy/envoy.json
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.name}}
            - name: POD_NAMESPACE
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}
            - name: POD_IP
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: status.podIP}}
            - name: SERVICE_ACCOUNT
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: spec.serviceAccountName}}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {cpu: 100m, memory: 64Mi}
          securityContext:
            {{- include "meshd.restrictedSecurityContext" $root | nindent 12 }}
          # The token and the root: it asks meshd for the gateway's EnvoyFilter BOOTSTRAP
          # patches as the gateway will authenticate.
          volumeMounts:
            - {name: meshd-envoy, mountPath: /etc/meshd/proxy}
            - {name: istio-token, mountPath: /var/run/secrets/tokens, readOnly: true}
            - {name: istiod-ca-cert, mountPath: /var/run/secrets/istio, readOnly: true}
      containers:
        - name: istio-proxy
          image: {{ $root.Values.injection.proxyImage }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [envoy]
          args: ["-c", "/etc/meshd/proxy/envoy.json", "--disable-hot-restart", "--drain-time-s", "45", "--log-level", "warning"]
          ports:
            {{- range $gw.service.ports }}
            - {name: {{ .name }}, containerPort: {{ .targetPort }}, protocol: TCP}
            {{- end }}
            - {name: http-envoy-prom, containerPort: 15090, protocol: TCP}
          readinessProbe:
            httpGet: {path: /healthz/ready, port: 15021, scheme: HTTP}
            initialDelaySeconds: 1
            periodSeconds: 2
            timeoutSeconds: 3
            failureThreshold: 30
          resources:
            {{- toYaml $gw.resources | nindent 12 }}
          securityContext:
            {{- include "meshd.restrictedSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - {name: meshd-envoy, mountPath: /etc/meshd/proxy, readOnly: true}
            - {name: istio-token, mountPath: /var/run/secrets/tokens, readOnly: true}
            - {name: istiod-ca-cert, mountPath: /var/run/secrets/istio, readOnly: true}
      volumes:
        - name: meshd-envoy
          emptyDir: {medium: Memory}
        - name: istio-token
          projected:
            defaultMode: 420
            sources:
              - serviceAccountToken:
                  audience: {{ $root.Values.injection.tokenAudience }}
                  expirationSeconds: {{ $root.Values.injection.tokenExpirationSeconds }}
                  path: istio-token
        - name: istiod-ca-cert
          configMap:
            name: {{ $root.Values.injection.rootCertConfigMap }}
            defaultMode: 420
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $gw.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "meshd.labels" $root | nindent 4 }}
    {{- toYaml $gw.labels | nindent 4 }}
  {{- with $gw.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $gw.service.type }}
  selector:
    {{- toYaml $gw.labels | nindent 4 }}
  ports:
    {{- range $gw.service.ports }}
    - {name: {{ .name }}, port: {{ .port }}, targetPort: {{ .targetPort }}, protocol: TCP}
    {{- end }}
{{- if and $gw.autoscaling $gw.autoscaling.enabled }}
---
apiVersion: {{ include "meshd.hpaApiVersion" $root }}
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $gw.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "meshd.labels" $root | nindent 4 }}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ $gw.name }}}
  minReplicas: {{ $gw.autoscaling.minReplicas }}
  maxReplicas: {{ $gw.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $gw.autoscaling.targetCPUUtilizationPercentage }}}
{{- end }}
---
apiVersion: {{ include "meshd.pdbApiVersion" $root }}
kind: PodDisruptionBudget
metadata:
  name: {{ $gw.name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "meshd.labels" $root | nindent 4 }}
spec:
  minAvailable: 1
  selector:
    matchLabels:
      {{- toYaml $gw.labels | nindent 6 }}
{{- end -}}
