# Network of the stack: one VPC, one subnet in var.zone, NAT egress for nodes without public addresses, and the
# two security groups (cluster-internal traffic; admin access).

resource "yandex_vpc_network" "main" {
  name        = "${var.project}-network"
  description = "Oracle training network"
  folder_id   = var.folder_id
  labels      = local.labels
}

resource "yandex_vpc_gateway" "egress" {
  name      = "${var.project}-egress"
  folder_id = var.folder_id
  labels    = local.labels

  shared_egress_gateway {}
}

resource "yandex_vpc_route_table" "egress" {
  name       = "${var.project}-egress"
  folder_id  = var.folder_id
  network_id = yandex_vpc_network.main.id
  labels     = local.labels

  static_route {
    destination_prefix = "0.0.0.0/0"
    gateway_id         = yandex_vpc_gateway.egress.id
  }
}

resource "yandex_vpc_subnet" "main" {
  name           = "${var.project}-${var.zone}"
  folder_id      = var.folder_id
  zone           = var.zone
  network_id     = yandex_vpc_network.main.id
  v4_cidr_blocks = [var.subnet_cidr]
  route_table_id = yandex_vpc_route_table.egress.id
  labels         = local.labels
}

# Attached to the master and every node: the traffic a multi-node training job needs and nothing from outside.
resource "yandex_vpc_security_group" "internal" {
  name        = "${var.project}-internal"
  description = "Master-node, node-node (NCCL, torchrun rendezvous) and pod traffic"
  folder_id   = var.folder_id
  network_id  = yandex_vpc_network.main.id
  labels      = local.labels

  ingress {
    protocol       = "ANY"
    description    = "Intra-subnet: NCCL, torchrun rendezvous, kubelet and master-node traffic"
    v4_cidr_blocks = [var.subnet_cidr]
  }

  ingress {
    protocol       = "ANY"
    description    = "Pod and service networks (pod-to-pod NCCL without hostNetwork)"
    v4_cidr_blocks = [var.pod_cidr, var.service_cidr]
  }

  ingress {
    protocol          = "TCP"
    description       = "Node health checks of the cloud's load balancers"
    predefined_target = "loadbalancer_healthchecks"
    from_port         = 0
    to_port           = 65535
  }

  egress {
    protocol       = "ANY"
    description    = "Outbound: image pulls, object storage, cloud APIs (through the NAT gateway)"
    v4_cidr_blocks = ["0.0.0.0/0"]
  }
}

# Admin access, from admin_cidrs only: SSH on the nodes, the Kubernetes API on the master.
resource "yandex_vpc_security_group" "admin" {
  name        = "${var.project}-admin"
  description = "SSH and Kubernetes API from the admin ranges"
  folder_id   = var.folder_id
  network_id  = yandex_vpc_network.main.id
  labels      = local.labels

  ingress {
    protocol       = "TCP"
    description    = "SSH to nodes"
    v4_cidr_blocks = var.admin_cidrs
    port           = 22
  }

  ingress {
    protocol       = "TCP"
    description    = "Kubernetes API (HTTPS)"
    v4_cidr_blocks = var.admin_cidrs
    port           = 443
  }

  ingress {
    protocol       = "TCP"
    description    = "Kubernetes API (kubectl)"
    v4_cidr_blocks = var.admin_cidrs
    port           = 6443
  }
}
