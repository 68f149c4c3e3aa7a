{{/*
Names. The server's objects take the full name (tollgate/tollgate for a
release "tollgate" in namespace "tollgate", as deploy/rbac/ assumes); the
operator's add "-operator".
*/}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate.operatorName" -}}
{{- printf "%s-operator" (include "tollgate.fullname" .) }}
{{- end }}

{{- define "tollgate.serverServiceAccount" -}}
{{- default (include "tollgate.fullname" .) .Values.server.serviceAccount.name }}
{{- end }}

{{- define "tollgate.operatorServiceAccount" -}}
{{- default (include "tollgate.operatorName" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* The operator's Lease, named after the release so releases never share one. */}}
{{- define "tollgate.leaseName" -}}
{{- include "tollgate.operatorName" . }}
{{- end }}

{{/* Labels of every object; "component" is server, operator or dev-redis. */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "tollgate.selectorLabels" . }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Call as (include "tollgate.componentLabels" (list . "server")). */}}
{{- define "tollgate.componentLabels" -}}
{{ include "tollgate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "tollgate.componentSelector" -}}
{{ include "tollgate.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "tollgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Security contexts of every pod and container: the Pod Security Standards'
"restricted" profile (a test creates each pod in a namespace enforcing it).
*/}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tollgate.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* "true" when the server has a Redis (any of the four ways). */}}
{{- define "tollgate.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret.name .Values.redis.clusterUrls .Values.devRedis.enabled }}true{{ end }}
{{- end }}

{{/* The Secret holding the Redis URL(s) that the chart creates. */}}
{{- define "tollgate.redisSecretName" -}}
{{- printf "%s-redis-url" (include "tollgate.fullname" .) }}
{{- end }}

{{- define "tollgate.devRedisName" -}}
{{- printf "%s-dev-redis" (include "tollgate.fullname" .) }}
{{- end }}

{{/* The server's store variables. The URL comes from a Secret (it may hold a password). */}}
{{- define "tollgate.redisEnv" -}}
{{- if .Values.devRedis.enabled }}
- name: TOLLGATE_REDIS
  value: {{ printf "redis://%s.%s.svc:6379" (include "tollgate.devRedisName" .) .Release.Namespace | quote }}
{{- else if or .Values.redis.url .Values.redis.clusterUrls }}
- name: TOLLGATE_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.redisSecretName" . }}
      key: url
{{- else if .Values.redis.existingSecret.name }}
- name: TOLLGATE_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret.name }}
      key: {{ .Values.redis.existingSecret.key }}
{{- end }}
{{- if or .Values.redis.clusterUrls .Values.redis.cluster }}
- name: TOLLGATE_REDIS_CLUSTER
  value: "true"
{{- end }}
- name: TOLLGATE_STORE_TIMEOUT
  value: {{ .Values.redis.storeTimeout | quote }}
{{- end }}

{{- define "tollgate.watchEnv" -}}
{{- if .Values.watchNamespaces }}
- name: TOLLGATE_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- end }}
- name: TOLLGATE_SECRET_LABEL
  value: {{ .Values.secretLabel | quote }}
- name: TOLLGATE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.logLevel }}
- name: TOLLGATE_LOG_LEVEL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The Secret of the gRPC port's certificate (and, by default, of the admin port's). */}}
{{- define "tollgate.grpcTlsSecret" -}}
{{- default (printf "%s-grpc-tls" (include "tollgate.fullname" .)) .Values.server.tls.secretName }}
{{- end }}

{{- define "tollgate.adminTlsSecret" -}}
{{- default (include "tollgate.grpcTlsSecret" .) .Values.server.adminTls.secretName }}
{{- end }}

{{/*
The server's Secret volumes (whole Secrets, never subPath: a subPath mount
is not updated when cert-manager renews the Secret), as a list of
(name, Secret, mount path); the TLS variables point into them.
*/}}
{{- define "tollgate.tlsVolumes" -}}
{{- $server := .Values.server }}
{{- $volumes := list }}
{{- if $server.tls.enabled }}
{{- $volumes = append $volumes (list "grpc-tls" (include "tollgate.grpcTlsSecret" .) "/etc/tollgate/tls") }}
{{- if and $server.tls.clientCA.required $server.tls.clientCA.secretName }}
{{- $volumes = append $volumes (list "grpc-client-ca" $server.tls.clientCA.secretName "/etc/tollgate/client-ca") }}
{{- end }}
{{- end }}
{{- if and $server.adminTls.enabled $server.adminTls.secretName }}
{{- $volumes = append $volumes (list "admin-tls" $server.adminTls.secretName "/etc/tollgate/admin-tls") }}
{{- end }}
{{- if $server.metrics.clientCA.secretName }}
{{- $volumes = append $volumes (list "metrics-client-ca" $server.metrics.clientCA.secretName "/etc/tollgate/metrics-client-ca") }}
{{- end }}
{{- toJson $volumes }}
{{- end }}

{{/* The server's TLS variables (src/config.rs, TlsArgs). */}}
{{- define "tollgate.tlsEnv" -}}
{{- $server := .Values.server }}
{{- if $server.tls.enabled }}
- name: TOLLGATE_GRPC_TLS_CERT
  value: "/etc/tollgate/tls/tls.crt"
- name: TOLLGATE_GRPC_TLS_KEY
  value: "/etc/tollgate/tls/tls.key"
{{- if $server.tls.clientCA.required }}
- name: TOLLGATE_GRPC_CLIENT_CA
  value: {{ printf "%s/%s" (ternary "/etc/tollgate/client-ca" "/etc/tollgate/tls" (not (empty $server.tls.clientCA.secretName))) $server.tls.clientCA.key | quote }}
{{- end }}
{{- with $server.tls.allowedSpiffeIds }}
- name: TOLLGATE_GRPC_CLIENT_SPIFFE_IDS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $server.tls.allowedDnsNames }}
- name: TOLLGATE_GRPC_CLIENT_DNS_NAMES
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- if $server.adminTls.enabled }}
{{- $dir := ternary "/etc/tollgate/admin-tls" "/etc/tollgate/tls" (not (empty $server.adminTls.secretName)) }}
- name: TOLLGATE_ADMIN_TLS_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: TOLLGATE_ADMIN_TLS_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- if $server.metrics.separatePort }}
- name: TOLLGATE_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int $server.metrics.port) | quote }}
{{- end }}
{{- with $server.metrics.clientCA.secretName }}
- name: TOLLGATE_METRICS_CLIENT_CA
  value: {{ printf "/etc/tollgate/metrics-client-ca/%s" $server.metrics.clientCA.key | quote }}
{{- end }}
{{- end }}

{{/*
What the schema cannot say: combinations of values. Each failure names the
values to change.
*/}}
{{- define "tollgate.validate" -}}
{{- $redis := .Values.redis }}
{{- $sources := list }}
{{- if $redis.url }}{{ $sources = append $sources "redis.url" }}{{ end }}
{{- if $redis.existingSecret.name }}{{ $sources = append $sources "redis.existingSecret.name" }}{{ end }}
{{- if $redis.clusterUrls }}{{ $sources = append $sources "redis.clusterUrls" }}{{ end }}
{{- if .Values.devRedis.enabled }}{{ $sources = append $sources "devRedis.enabled" }}{{ end }}
{{- if gt (len $sources) 1 }}
{{- fail (printf "set one Redis, not %d: %s" (len $sources) (join ", " $sources)) }}
{{- end }}
{{- if and $redis.cluster (or $redis.clusterUrls .Values.devRedis.enabled (not (or $redis.url $redis.existingSecret.name))) }}
{{- fail "redis.cluster applies to redis.url or redis.existingSecret (redis.clusterUrls are Cluster nodes already; devRedis is not a Cluster)" }}
{{- end }}
{{- $server := .Values.server }}
{{- $most := int $server.replicas }}
{{- $which := "server.replicas" }}
{{- if $server.autoscaling.enabled }}
{{- $most = int $server.autoscaling.maxReplicas }}
{{- $which = "server.autoscaling.maxReplicas" }}
{{- end }}
{{- if and (gt $most 1) (not (include "tollgate.hasRedis" .)) (not $server.allowReplicasWithoutRedis) }}
{{- fail (printf "%s is %d but no Redis is set: each replica would count quotas and remember replay nonces on its own. Set redis.url (or redis.existingSecret.name, redis.clusterUrls, devRedis.enabled), or accept per-replica limits with server.allowReplicasWithoutRedis=true" $which $most) }}
{{- end }}
{{- if and $server.autoscaling.enabled (gt (int $server.autoscaling.minReplicas) (int $server.autoscaling.maxReplicas)) }}
{{- fail "server.autoscaling.minReplicas is above server.autoscaling.maxReplicas" }}
{{- end }}
{{- if and $server.autoscaling.enabled (not (dig "requests" "cpu" "" $server.resources)) }}
{{- fail "server.autoscaling scales on CPU utilisation, which needs server.resources.requests.cpu" }}
{{- end }}
{{- $stop := add $server.preStopSleepSeconds $server.drainTimeoutSeconds }}
{{- if le (int $server.terminationGracePeriodSeconds) (int $stop) }}
{{- fail (printf "server.terminationGracePeriodSeconds (%d) must exceed server.preStopSleepSeconds + server.drainTimeoutSeconds (%d), or Kubernetes kills the server mid-drain" (int $server.terminationGracePeriodSeconds) (int $stop)) }}
{{- end }}
{{- if and (ne $server.trustedOrigin "forwarded") (gt (int $server.trustedHops) 0) }}
{{- fail "server.trustedHops applies only with server.trustedOrigin=forwarded" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.grpcFromNamespaces) }}
{{- fail "networkPolicy.enabled needs networkPolicy.grpcFromNamespaces: the namespaces of the Envoys that call tollgate (mesh workloads, the gateway); without any, no Envoy could reach it" }}
{{- end }}
{{- include "tollgate.validateTls" . }}
{{- end }}

{{/*
TLS values that cannot work, refused as `tollgate serve` refuses the
flags they become (exit 2, src/config.rs), but naming the values.
*/}}
{{- define "tollgate.validateTls" -}}
{{- $tls := .Values.server.tls }}
{{- $admin := .Values.server.adminTls }}
{{- $metrics := .Values.server.metrics }}
{{- $listed := or $tls.allowedSpiffeIds $tls.allowedDnsNames }}
{{- if not $tls.enabled }}
{{- if $tls.clientCA.secretName }}
{{- fail "server.tls.clientCA.secretName is set but server.tls.enabled is false: a client CA needs TLS on the gRPC port" }}
{{- end }}
{{- if $listed }}
{{- fail "server.tls.allowedSpiffeIds and server.tls.allowedDnsNames need server.tls.enabled: identities are read from client certificates, which need TLS on the gRPC port" }}
{{- end }}
{{- if $tls.certManager.enabled }}
{{- fail "server.tls.certManager.enabled issues the gRPC port's certificate, but server.tls.enabled is false" }}
{{- end }}
{{- end }}
{{- if not $tls.clientCA.required }}
{{- if $listed }}
{{- fail "server.tls.allowedSpiffeIds and server.tls.allowedDnsNames need server.tls.clientCA.required=true: without a client certificate there is no identity to check" }}
{{- end }}
{{- if $tls.clientCA.secretName }}
{{- fail "server.tls.clientCA.secretName is set but server.tls.clientCA.required is false: no client certificate would be asked for" }}
{{- end }}
{{- end }}
{{- range $tls.allowedDnsNames }}
{{- $last := last (splitList "." (trimSuffix "." .)) }}
{{- if or (regexMatch "^[0-9]+$" $last) (regexMatch "^0[xX][0-9a-fA-F]*$" $last) }}
{{- fail (printf "server.tls.allowedDnsNames: %q is not a DNS name (its last label is a number; an IP address is not a DNS SAN)" .) }}
{{- end }}
{{- end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "server.tls.certManager.enabled needs server.tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs tollgate's certificate" }}
{{- end }}
{{- if and $admin.enabled (not $admin.secretName) (not $tls.enabled) }}
{{- fail "server.adminTls.secretName is empty, which means the gRPC port's Secret, but server.tls.enabled is false: name the admin port's Secret in server.adminTls.secretName" }}
{{- end }}
{{- if $metrics.clientCA.secretName }}
{{- if not $metrics.separatePort }}
{{- fail "server.metrics.clientCA.secretName needs server.metrics.separatePort=true: /metrics on a port of its own, so that probes need no client certificate" }}
{{- end }}
{{- if not $admin.enabled }}
{{- fail "server.metrics.clientCA.secretName needs server.adminTls.enabled: the metrics port serves TLS with the admin port's certificate" }}
{{- end }}
{{- end }}
{{- if and $metrics.separatePort (has (int $metrics.port) (list 50051 9090)) }}
{{- fail (printf "server.metrics.port (%d) is already the gRPC or the admin port: choose another" (int $metrics.port)) }}
{{- end }}
{{- $monitor := .Values.serviceMonitor }}
{{- if and $monitor.enabled $metrics.clientCA.secretName (not $monitor.tls.clientSecretName) }}
{{- fail "serviceMonitor.enabled with server.metrics.clientCA.secretName needs serviceMonitor.tls.clientSecretName: a Secret with Prometheus' client certificate from that CA, or every scrape is refused" }}
{{- end }}
{{- if and (not $admin.enabled) (or $monitor.tls.serverName $monitor.tls.ca.secretName $monitor.tls.clientSecretName) }}
{{- fail "serviceMonitor.tls applies to a TLS admin or metrics port: set server.adminTls.enabled, or leave serviceMonitor.tls empty" }}
{{- end }}
{{- if and $monitor.tls.clientSecretName (not $metrics.clientCA.secretName) }}
{{- fail "serviceMonitor.tls.clientSecretName applies with server.metrics.clientCA.secretName: no other port asks for a client certificate" }}
{{- end }}
{{- end }}
