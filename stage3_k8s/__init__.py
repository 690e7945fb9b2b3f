"""Stage 3: the clustered node in a container on Kubernetes, finding its peers through DNS."""
