{{/* Names, labels and RBAC rules shared by every template; each is defined once here. */}}

{{/* Object names: the release name, or <release>-shopdb-operator when it does not say what it is. */}}
{{- define "shopdb-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels. `name` is fixed: database NetworkPolicies admit the operator by it. */}}
{{- define "shopdb-operator.selectorLabels" -}}
app.kubernetes.io/name: shopdb-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object; no Helm-only labels, so the rendered manifests/ stay truthful. */}}
{{- define "shopdb-operator.labels" -}}
{{ include "shopdb-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: shopdb-operator
{{- end -}}

{{/* Who the roles are granted to: the operator's ServiceAccount. */}}
{{- define "shopdb-operator.subjects" -}}
- kind: ServiceAccount
  name: {{ include "shopdb-operator.fullname" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{- define "shopdb-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The namespaces the operator watches in namespace scope (the release's when none is listed). */}}
{{- define "shopdb-operator.watchNamespaces" -}}
{{- .Values.watchNamespaces | default (list .Release.Namespace) | toJson -}}
{{- end -}}

{{/*
RBAC rules, least privilege. Each rule is here once and used by the ClusterRole (cluster
scope) or by the per-namespace Roles (namespace scope); manifests/ is rendered from them.
*/}}

{{/* Rules on namespaced objects: the custom resource and every child the operator builds. */}}
{{- define "shopdb-operator.rules.namespaced" -}}
# Our custom resource: kopf watches it, patches finalizers/annotations; no create or delete.
- apiGroups: [shopdb.io]
  resources: [shopdatabaseclusters]
  verbs: [get, list, watch, patch, update]
# Observed state (phase, currentPrimary, instances) is written to the status subresource.
- apiGroups: [shopdb.io]
  resources: [shopdatabaseclusters/status]
  verbs: [get, patch, update]
# Children carry blockOwnerDeletion owner references, which need update on the owner's finalizers.
- apiGroups: [shopdb.io]
  resources: [shopdatabaseclusters/finalizers]
  verbs: [update]
# Generated credentials; never deleted by hand (owner references garbage-collect them), never updated whole.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# postgresql.conf/pgbouncer.ini/scripts ConfigMaps and the -rw/-ro/route Services, applied server-side.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, update, delete]
# StatefulSets create the volumes; the operator grows them (patch) and removes them on reclaimPolicy Delete.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, patch, delete]
# StatefulSets create the pods; the operator relabels roles on failover (patch) and restarts/fences (delete).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
# what a backup Job reports (pgbackrest info) is read from its pod's log
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# a promoted replica takes the primary's resources in place (in-place pod resize), and back
- apiGroups: [""]
  resources: [pods/resize]
  verbs: [patch]
# kopf and the operator post Events about handlers, failover and errors (core and events.k8s.io APIs).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# PostgreSQL instances (StatefulSets) and PgBouncer/Redis (Deployments).
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, update, delete]
# PodDisruptionBudgets so that node drains never take the database tier down at once.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
# Partition and materialized-view maintenance CronJobs.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, list, watch, create, patch, update, delete]
# Jobs the operator starts once or cleans up (CronJob runs); never changed in place.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# NetworkPolicies that admit only PgBouncer, peers, the operator and Jobs to the databases.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
# Each cluster's primary Lease: created naming the first primary, handed over on failover.
# (The operator holds get and patch on leases itself, so it may grant them to the agents.)
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, patch, update]
# The database pods' instance-agent: a ServiceAccount per cluster, with a Role to read and
# renew that cluster's primary Lease only.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, update]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update]
{{- end -}}

{{/* Cluster-scoped reads kopf itself needs, in either scope. */}}
{{- define "shopdb-operator.rules.kopfCluster" -}}
# kopf discovers served resources and notices CRD changes at runtime.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
# kopf resolves the namespaces it serves (in namespace scope it lists them to match names).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}

{{/* kopf peering (only with --peering): cluster-wide peerings in cluster scope. */}}
{{- define "shopdb-operator.rules.clusterPeering" -}}
# kopf peering: operators see each other and pause (--peering; unused with --standalone).
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* kopf peering in namespace scope: one KopfPeering per watched namespace. */}}
{{- define "shopdb-operator.rules.namespacedPeering" -}}
# kopf peering: operators see each other and pause (--peering; unused with --standalone).
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* Leader lease, only in the operator's own namespace: a cluster-wide lease grant could hijack
     the leader election of other controllers (kube-system). */}}
{{- define "shopdb-operator.rules.lease" -}}
# One active operator: it holds a Lease in its own namespace.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, patch, update]
{{- end -}}
