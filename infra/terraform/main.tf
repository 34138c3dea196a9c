# Shared names, labels and the spending guard of the Oracle cloud stack.

locals {
  # Every labelled resource carries these; `project` is what the kill switch and the audits select on.
  labels = {
    project      = var.project
    "managed-by" = "terraform"
  }

  bucket_name = coalesce(var.checkpoint_bucket_name, "${var.project}-checkpoints-${var.folder_id}")

  # vCPUs and RAM (GB) per GPU: a GPU VM must ask for exactly these multiples of its GPU count.
  gpu_platforms = {
    "gpu-standard-v2" = { cores_per_gpu = 8, memory_gb_per_gpu = 48 }
    "gpu-standard-v3" = { cores_per_gpu = 28, memory_gb_per_gpu = 119 }
  }

  max_gpus = var.node_count * var.gpus_per_node
  # 730 hours: the average month. The provider has no budget resource, so the budget is enforced here, on the
  # one thing that spends it: the GPU node group refuses to plan when its full-scale cost exceeds the budget.
  max_monthly_gpu_cost_usd = local.max_gpus * var.gpu_hour_price_usd * 730
}
