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
{{- end }}
