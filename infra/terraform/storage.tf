# Checkpoint storage: a private, versioned bucket encrypted with its own KMS key; the GPU nodes may read and
# upload there and nowhere else.

resource "yandex_kms_symmetric_key" "checkpoints" {
  name                = "${var.project}-checkpoints"
  description         = "Default server-side encryption of the Oracle checkpoint bucket"
  folder_id           = var.folder_id
  default_algorithm   = "AES_256"
  rotation_period     = "8760h"
  deletion_protection = true
  labels              = local.labels
}

resource "yandex_storage_bucket" "checkpoints" {
  bucket                = local.bucket_name
  folder_id             = var.folder_id
  default_storage_class = "STANDARD"
  # Buckets carry `tags`, the storage service's name for labels.
  tags = local.labels

  anonymous_access_flags {
    read        = false
    list        = false
    config_read = false
  }

  versioning {
    enabled = true
  }

  server_side_encryption_configuration {
    rule {
      apply_server_side_encryption_by_default {
        kms_master_key_id = yandex_kms_symmetric_key.checkpoints.id
        sse_algorithm     = "aws:kms"
      }
    }
  }

  # Versioning keeps every overwritten checkpoint; this bounds what that costs.
  lifecycle_rule {
    id      = "expire-noncurrent-versions"
    enabled = true
    prefix  = ""

    noncurrent_version_expiration {
      days = var.noncurrent_version_retention_days
    }
  }

  lifecycle_rule {
    id                                     = "abort-incomplete-uploads"
    enabled                                = true
    prefix                                 = ""
    abort_incomplete_multipart_upload_days = 7
  }

  lifecycle {
    prevent_destroy = true
  }
}

# Upload includes reading but not deleting: a job cannot remove checkpoints, only the lifecycle rule expires them.
resource "yandex_storage_bucket_iam_binding" "nodes_upload" {
  bucket  = yandex_storage_bucket.checkpoints.bucket
  role    = "storage.uploader"
  members = ["serviceAccount:${yandex_iam_service_account.nodes.id}"]
}

resource "yandex_kms_symmetric_key_iam_member" "nodes_checkpoints" {
  symmetric_key_id = yandex_kms_symmetric_key.checkpoints.id
  role             = "kms.keys.encrypterDecrypter"
  member           = "serviceAccount:${yandex_iam_service_account.nodes.id}"
}
