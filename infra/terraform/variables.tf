# Inputs of the Oracle cloud stack. The caps below (GPUs per node, nodes, total GPUs, budget) are the numbers of
# the [cluster] section of policies/policies.toml; tests/infra/test_terraform.py fails when they drift apart.

variable "cloud_id" {
  type        = string
  description = "Yandex Cloud cloud id the stack runs in."

  validation {
    condition     = can(regex("^[a-z0-9]{20}$", var.cloud_id))
    error_message = "cloud_id must be a Yandex Cloud id: 20 lower-case letters and digits."
  }
}

variable "folder_id" {
  type        = string
  description = "Folder that holds every resource of the stack."

  validation {
    condition     = can(regex("^[a-z0-9]{20}$", var.folder_id))
    error_message = "folder_id must be a Yandex Cloud id: 20 lower-case letters and digits."
  }
}

variable "project" {
  type        = string
  description = "Project mark: prefix of resource names and the `project` label the kill switch selects on."
  default     = "oracle"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.project))
    error_message = "project must be 3-32 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "zone" {
  type        = string
  description = "Availability zone of the subnet, the Kubernetes master and the GPU nodes (region ru-central1)."
  default     = "ru-central1-a"

  validation {
    condition     = contains(["ru-central1-a", "ru-central1-b", "ru-central1-d"], var.zone)
    error_message = "zone must be one of ru-central1-a, ru-central1-b, ru-central1-d."
  }
}

variable "subnet_cidr" {
  type        = string
  description = "IPv4 range of the node subnet."
  default     = "10.128.0.0/20"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0)) && startswith(var.subnet_cidr, "10.")
    error_message = "subnet_cidr must be a private IPv4 CIDR inside 10.0.0.0/8."
  }
}

variable "pod_cidr" {
  type        = string
  description = "IPv4 range Kubernetes gives pods; must not overlap any subnet of the network."
  default     = "10.112.0.0/16"

  validation {
    condition     = can(cidrhost(var.pod_cidr, 0))
    error_message = "pod_cidr must be an IPv4 CIDR."
  }
}

variable "service_cidr" {
  type        = string
  description = "IPv4 range Kubernetes gives services; must not overlap any subnet of the network."
  default     = "10.96.0.0/16"

  validation {
    condition     = can(cidrhost(var.service_cidr, 0))
    error_message = "service_cidr must be an IPv4 CIDR."
  }
}

variable "admin_cidrs" {
  type        = list(string)
  description = "Ranges allowed to reach node SSH (22) and the Kubernetes API (443, 6443): the admins' VPN or bastion."

  validation {
    condition = length(var.admin_cidrs) > 0 && alltrue([
      for cidr in var.admin_cidrs : can(cidrhost(cidr, 0)) && !endswith(cidr, "/0")
    ])
    error_message = "admin_cidrs must list at least one IPv4 CIDR, and none may be a /0 (the whole internet)."
  }
}

variable "admin_ssh_public_key" {
  type        = string
  description = "Public SSH key installed for the `ubuntu` user on GPU nodes (a public key, not a secret)."

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+", var.admin_ssh_public_key))
    error_message = "admin_ssh_public_key must be one OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa)."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the master and the GPU node group."
  default     = "1.31"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as 1.31."
  }
}

variable "master_public_ip" {
  type        = bool
  description = "Give the Kubernetes API a public address (reachable only from admin_cidrs); false keeps it private."
  default     = true
}

variable "gpu_platform" {
  type        = string
  description = "Compute platform of the GPU nodes: gpu-standard-v3 (A100 80 GB) or gpu-standard-v2 (V100)."
  default     = "gpu-standard-v3"

  validation {
    condition     = contains(["gpu-standard-v2", "gpu-standard-v3"], var.gpu_platform)
    error_message = "gpu_platform must be gpu-standard-v2 or gpu-standard-v3."
  }
}

variable "gpus_per_node" {
  type        = number
  description = "GPUs of each node (policy cap: cluster.max_gpus_per_node = 8)."
  default     = 8

  validation {
    condition     = var.gpus_per_node <= 8 && contains([1, 2, 4, 8], var.gpus_per_node)
    error_message = "gpus_per_node must be 1, 2, 4 or 8: the platform's shapes, capped by policy at 8."
  }
}

variable "node_count" {
  type        = number
  description = "Nodes of the GPU group (the maximum when autoscale is on; policy cap: cluster.max_nodes = 32)."
  default     = 2

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 32 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 32 (policy cluster.max_nodes)."
  }

  validation {
    condition     = var.node_count * var.gpus_per_node <= 256
    error_message = "node_count × gpus_per_node must not exceed 256 GPUs (policy cluster.max_total_gpus)."
  }
}

variable "autoscale" {
  type        = bool
  description = "Let the group scale between node_count_min and node_count instead of holding node_count nodes."
  default     = false
}

variable "node_count_min" {
  type        = number
  description = "Fewest nodes of the GPU group when autoscale is on (0 releases every GPU when idle)."
  default     = 0

  validation {
    condition     = var.node_count_min >= 0 && var.node_count_min <= var.node_count
    error_message = "node_count_min must be between 0 and node_count."
  }
}

variable "preemptible" {
  type        = bool
  description = "Use preemptible GPU nodes: cheaper, but the cloud may stop them at any time (checkpoint often)."
  default     = false
}

variable "gpu_cluster_enabled" {
  type        = bool
  description = "Join the nodes into a GPU cluster (InfiniBand between nodes for NCCL); needs 8-GPU gpu-standard-v3 nodes."
  default     = true

  validation {
    condition     = !var.gpu_cluster_enabled || (var.gpus_per_node == 8 && var.gpu_platform == "gpu-standard-v3")
    error_message = "A GPU cluster takes only 8-GPU gpu-standard-v3 nodes: set gpus_per_node = 8 or gpu_cluster_enabled = false."
  }
}

variable "boot_disk_size_gb" {
  type        = number
  description = "Boot disk of each GPU node, in GB (images and local scratch)."
  default     = 512

  validation {
    condition     = var.boot_disk_size_gb >= 64 && var.boot_disk_size_gb <= 4096
    error_message = "boot_disk_size_gb must be between 64 and 4096."
  }
}

variable "checkpoint_bucket_name" {
  type        = string
  description = "Name of the checkpoint bucket; null derives <project>-checkpoints-<folder_id> (names are global)."
  default     = null

  validation {
    condition     = var.checkpoint_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.checkpoint_bucket_name))
    error_message = "checkpoint_bucket_name must be 3-63 lower-case letters, digits, dots and dashes."
  }
}

variable "noncurrent_version_retention_days" {
  type        = number
  description = "Days an overwritten or deleted checkpoint version is kept before the bucket expires it."
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && var.noncurrent_version_retention_days <= 365
    error_message = "noncurrent_version_retention_days must be between 1 and 365."
  }
}

variable "monthly_budget_usd" {
  type        = number
  description = "Monthly spend the GPU node group may reach at full scale, in USD (policy cap: cluster.monthly_budget_usd)."
  default     = 250000

  validation {
    condition     = var.monthly_budget_usd > 0 && var.monthly_budget_usd <= 250000
    error_message = "monthly_budget_usd must be positive and at most 250000 (policy cluster.monthly_budget_usd)."
  }
}

variable "gpu_hour_price_usd" {
  type        = number
  description = "Price of one GPU-hour with its share of vCPUs and RAM on gpu_platform, in USD (check the price list)."
  default     = 3.5

  validation {
    condition     = var.gpu_hour_price_usd > 0
    error_message = "gpu_hour_price_usd must be positive."
  }
}
