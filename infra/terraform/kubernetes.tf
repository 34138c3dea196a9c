# The managed Kubernetes cluster, its GPU node group, and the two service accounts they run as, each holding only
# the roles Yandex documents for its job.

resource "yandex_iam_service_account" "cluster" {
  name        = "${var.project}-k8s-cluster"
  description = "Runs the Oracle Kubernetes master: manages nodes, networks and load balancers"
  folder_id   = var.folder_id
  labels      = local.labels
}

resource "yandex_iam_service_account" "nodes" {
  name        = "${var.project}-k8s-nodes"
  description = "Identity of the Oracle GPU nodes: pulls images, writes checkpoints"
  folder_id   = var.folder_id
  labels      = local.labels
}

resource "yandex_resourcemanager_folder_iam_member" "cluster_agent" {
  folder_id = var.folder_id
  role      = "k8s.clusters.agent"
  member    = "serviceAccount:${yandex_iam_service_account.cluster.id}"
}

# Only needed when the master gets a public address.
resource "yandex_resourcemanager_folder_iam_member" "cluster_public_ip" {
  count     = var.master_public_ip ? 1 : 0
  folder_id = var.folder_id
  role      = "vpc.publicAdmin"
  member    = "serviceAccount:${yandex_iam_service_account.cluster.id}"
}

resource "yandex_resourcemanager_folder_iam_member" "nodes_image_pull" {
  folder_id = var.folder_id
  role      = "container-registry.images.puller"
  member    = "serviceAccount:${yandex_iam_service_account.nodes.id}"
}

resource "yandex_kms_symmetric_key" "kubernetes" {
  name                = "${var.project}-k8s-secrets"
  description         = "Encrypts the Oracle cluster's Kubernetes secrets at rest"
  folder_id           = var.folder_id
  default_algorithm   = "AES_256"
  rotation_period     = "8760h"
  deletion_protection = true
  labels              = local.labels
}

resource "yandex_kms_symmetric_key_iam_member" "cluster_secrets" {
  symmetric_key_id = yandex_kms_symmetric_key.kubernetes.id
  role             = "kms.keys.encrypterDecrypter"
  member           = "serviceAccount:${yandex_iam_service_account.cluster.id}"
}

resource "yandex_compute_gpu_cluster" "main" {
  count             = var.gpu_cluster_enabled ? 1 : 0
  name              = "${var.project}-gpu"
  folder_id         = var.folder_id
  zone              = var.zone
  interconnect_type = "INFINIBAND"
  labels            = local.labels
}

resource "yandex_kubernetes_cluster" "main" {
  name        = "${var.project}-k8s"
  description = "Oracle training cluster"
  folder_id   = var.folder_id
  network_id  = yandex_vpc_network.main.id
  labels      = local.labels

  cluster_ipv4_range      = var.pod_cidr
  service_ipv4_range      = var.service_cidr
  service_account_id      = yandex_iam_service_account.cluster.id
  node_service_account_id = yandex_iam_service_account.nodes.id
  release_channel         = "STABLE"
  network_policy_provider = "CALICO"

  master {
    version            = var.kubernetes_version
    public_ip          = var.master_public_ip
    security_group_ids = [yandex_vpc_security_group.internal.id, yandex_vpc_security_group.admin.id]

    master_location {
      zone      = var.zone
      subnet_id = yandex_vpc_subnet.main.id
    }

    maintenance_policy {
      auto_upgrade = true

      maintenance_window {
        start_time = "02:00"
        duration   = "3h"
      }
    }
  }

  kms_provider {
    key_id = yandex_kms_symmetric_key.kubernetes.id
  }

  # Without these, a destroy may revoke the roles before the cluster is gone and leave it stuck.
  depends_on = [
    yandex_resourcemanager_folder_iam_member.cluster_agent,
    yandex_resourcemanager_folder_iam_member.cluster_public_ip,
    yandex_resourcemanager_folder_iam_member.nodes_image_pull,
    yandex_kms_symmetric_key_iam_member.cluster_secrets,
  ]
}

resource "yandex_kubernetes_node_group" "gpu" {
  cluster_id  = yandex_kubernetes_cluster.main.id
  name        = "${var.project}-gpu"
  description = "Oracle GPU workers"
  version     = var.kubernetes_version
  labels      = merge(local.labels, { pool = "gpu" })

  node_labels = {
    project = var.project
    pool    = "gpu"
  }

  instance_template {
    platform_id = var.gpu_platform
    labels      = local.labels

    metadata = {
      "ssh-keys" = "ubuntu:${var.admin_ssh_public_key}"
    }

    resources {
      gpus   = var.gpus_per_node
      cores  = local.gpu_platforms[var.gpu_platform].cores_per_gpu * var.gpus_per_node
      memory = local.gpu_platforms[var.gpu_platform].memory_gb_per_gpu * var.gpus_per_node
    }

    gpu_settings {
      gpu_cluster_id  = one(yandex_compute_gpu_cluster.main[*].id)
      gpu_environment = "runc_drivers_cuda"
    }

    boot_disk {
      type = "network-ssd"
      size = var.boot_disk_size_gb
    }

    network_interface {
      nat                = false
      subnet_ids         = [yandex_vpc_subnet.main.id]
      security_group_ids = [yandex_vpc_security_group.internal.id, yandex_vpc_security_group.admin.id]
    }

    scheduling_policy {
      preemptible = var.preemptible
    }

    container_runtime {
      type = "containerd"
    }
  }

  scale_policy {
    dynamic "fixed_scale" {
      for_each = var.autoscale ? [] : [var.node_count]
      content {
        size = fixed_scale.value
      }
    }

    dynamic "auto_scale" {
      for_each = var.autoscale ? [var.node_count] : []
      content {
        min     = var.node_count_min
        max     = auto_scale.value
        initial = var.node_count_min
      }
    }
  }

  allocation_policy {
    location {
      zone = var.zone
    }
  }

  # Never surge above node_count during updates: the surge would hold GPUs beyond the policy's total cap.
  deploy_policy {
    max_expansion   = 0
    max_unavailable = 1
  }

  # A node upgrade restarts the node and kills a multi-day job: upgrades are applied by hand between runs.
  maintenance_policy {
    auto_upgrade = false
    auto_repair  = true
  }

  lifecycle {
    precondition {
      condition     = local.max_monthly_gpu_cost_usd <= var.monthly_budget_usd
      error_message = "At full scale the GPU nodes cost about ${local.max_monthly_gpu_cost_usd} USD a month, above monthly_budget_usd (${var.monthly_budget_usd}): lower node_count or gpus_per_node."
    }
  }
}
