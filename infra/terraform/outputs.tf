output "bucket_name" {
  description = "Checkpoint bucket (s3://<name> at storage.yandexcloud.net)."
  value       = yandex_storage_bucket.checkpoints.bucket
}

output "cluster_id" {
  description = "Managed Kubernetes cluster id (yc managed-kubernetes cluster get-credentials --id ...)."
  value       = yandex_kubernetes_cluster.main.id
}

output "node_group_id" {
  description = "GPU node group id."
  value       = yandex_kubernetes_node_group.gpu.id
}

output "network_id" {
  description = "VPC network id."
  value       = yandex_vpc_network.main.id
}

output "max_monthly_gpu_cost_usd" {
  description = "Estimated monthly cost of the GPU node group at full scale, checked against monthly_budget_usd."
  value       = local.max_monthly_gpu_cost_usd
}
