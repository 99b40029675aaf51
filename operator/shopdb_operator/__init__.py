"""shopdb-operator: runs the PostgreSQL tier of a marketplace on Kubernetes."""

__version__ = "0.1.0"

GROUP = "shopdb.io"
VERSION = "v1alpha1"
KIND = "ShopDatabaseCluster"
PLURAL = "shopdatabaseclusters"
SINGULAR = "shopdatabasecluster"
SHORT_NAMES = ["sdc"]
