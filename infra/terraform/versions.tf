# Terraform 1.9 is the first release whose variable validations may refer to other variables; variables.tf relies on
# that to cap the product node_count × gpus_per_node, so older versions must refuse this configuration.
terraform {
  required_version = ">= 1.9.0"

  required_providers {
    yandex = {
      source = "yandex-cloud/yandex"
      # 0.145 is the first release with yandex_storage_bucket_iam_binding (bucket-scoped access for the nodes).
      version = "~> 0.145"
    }
  }
}

# Credentials come from the environment (YC_TOKEN or YC_SERVICE_ACCOUNT_KEY_FILE), never from these files.
provider "yandex" {
  cloud_id  = var.cloud_id
  folder_id = var.folder_id
  zone      = var.zone
}
