# The vm tier: long-running hosts with a public address for `placement: vm` and `baseCapacity`
# (docs/aws.md). An Auto Scaling group of one launch template, not aws_instance resources: it
# replaces a host that fails its EC2 health check by itself, its size is one number
# (var.vm_host_count), and the controller finds the hosts by the group's name
# (DescribeAutoScalingGroups + DescribeInstances, boxer/backends/vmhost/discovery.py) instead of
# instance ids in outputs.json that go stale whenever a host is replaced. Each host runs the
# function's own image, so a vm instance finds the same programs a function instance does, with
# `boxer host serve` as a systemd unit (templates/vm-host-user-data.sh.tftpl).

locals {
  vm_enabled = var.vm_host_count > 0
}

resource "aws_security_group" "vm_host" {
  count       = local.vm_enabled ? 1 : 0
  name        = "${var.name}-vm-host"
  description = "boxer vm hosts: the host daemon port from the controller (beside the coordinator)"
  vpc_id      = data.aws_subnet.coordinator.vpc_id
  tags        = local.tags
}

# The controller runs on the coordinator's instance and dials each host's daemon.
resource "aws_vpc_security_group_ingress_rule" "vm_host_daemon" {
  count                        = local.vm_enabled ? 1 : 0
  security_group_id            = aws_security_group.vm_host[0].id
  description                  = "boxer host daemon, from the controller"
  ip_protocol                  = "tcp"
  from_port                    = var.vm_host_port
  to_port                      = var.vm_host_port
  referenced_security_group_id = aws_security_group.coordinator.id
}

resource "aws_vpc_security_group_egress_rule" "coordinator_to_vm_hosts" {
  count                        = local.vm_enabled ? 1 : 0
  security_group_id            = aws_security_group.coordinator.id
  description                  = "the controller to the vm host daemons"
  ip_protocol                  = "tcp"
  from_port                    = var.vm_host_port
  to_port                      = var.vm_host_port
  referenced_security_group_id = aws_security_group.vm_host[0].id
}

# Out: the coordinator (its port and the relay's, at its public address), ECR, SSM and package
# mirrors over HTTPS, and the punched connections to other instances, whose addresses (Lambda's
# NATs) and ports are not known in advance: TCP to anywhere. Nothing comes in but the daemon port:
# a punched connection is a simultaneous open, which the security group, being stateful, lets
# back in as the answer to the host's own SYN.
resource "aws_vpc_security_group_egress_rule" "vm_host_tcp" {
  #checkov:skip=CKV_AWS_382:Punched overlay connections go to Lambda NAT addresses and ports that cannot be known in advance; TCP only.
  count             = local.vm_enabled ? 1 : 0
  security_group_id = aws_security_group.vm_host[0].id
  description       = "coordinator, HTTPS and punched overlay connections"
  ip_protocol       = "tcp"
  from_port         = 1
  to_port           = 65535
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_iam_role" "vm_host" {
  count              = local.vm_enabled ? 1 : 0
  name               = "${var.name}-vm-host"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

# The host daemon's credential: a token of its own, not the deployment secret. The apps of vm
# instances run on these hosts, as the daemon's children; the secret there would let one of them
# act as the controller towards the coordinator. Each instance gets only its own token, in the
# event; the controller reads this parameter to authenticate to the daemons.
resource "random_bytes" "vm_host_token" {
  count  = local.vm_enabled ? 1 : 0
  length = 32
}

resource "aws_ssm_parameter" "vm_host_token" {
  count       = local.vm_enabled ? 1 : 0
  name        = "/${var.name}/vm-host-token"
  description = "boxer vm host daemon token (hex) for ${var.name}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_bytes.vm_host_token[0].hex
  tags        = local.tags
}

# A vm host pulls the function's image and reads its daemon's token: nothing else.
data "aws_iam_policy_document" "vm_host" {
  count                   = local.vm_enabled ? 1 : 0
  source_policy_documents = [data.aws_iam_policy_document.pull_image.json]

  statement {
    sid       = "ReadHostToken"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.vm_host_token[0].arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptHostToken"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "vm_host" {
  count  = local.vm_enabled ? 1 : 0
  name   = "${var.name}-vm-host"
  role   = aws_iam_role.vm_host[0].id
  policy = data.aws_iam_policy_document.vm_host[0].json
}

resource "aws_iam_instance_profile" "vm_host" {
  count = local.vm_enabled ? 1 : 0
  name  = "${var.name}-vm-host"
  role  = aws_iam_role.vm_host[0].name
  tags  = local.tags
}

resource "aws_launch_template" "vm_host" {
  #checkov:skip=CKV_AWS_88:A public address is what a vm host is for (instances without NAT, reached by punched connections); only the daemon port is open, to the coordinator.
  count                  = local.vm_enabled ? 1 : 0
  name                   = "${var.name}-vm-host"
  image_id               = data.aws_ssm_parameter.coordinator_ami.insecure_value
  instance_type          = var.vm_host_instance_type
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    name = aws_iam_instance_profile.vm_host[0].name
  }

  network_interfaces {
    associate_public_ip_address = true # the vm tier's point: a public address, no NAT
    security_groups             = [aws_security_group.vm_host[0].id]
  }

  user_data = base64encode(templatefile("${path.module}/templates/vm-host-user-data.sh.tftpl", {
    region          = local.region
    registry        = split("/", aws_ecr_repository.this.repository_url)[0]
    image           = local.image_uri
    token_parameter = aws_ssm_parameter.vm_host_token[0].name
    port            = var.vm_host_port
    slots           = var.vm_host_slots
  }))

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      encrypted   = true
      volume_type = "gp3"
      volume_size = 16
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-vm-host" })
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "vm_host" {
  count               = local.vm_enabled ? 1 : 0
  name                = "${var.name}-vm-hosts"
  min_size            = var.vm_host_count
  max_size            = var.vm_host_count
  desired_capacity    = var.vm_host_count
  vpc_zone_identifier = [local.subnet_id]
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.vm_host[0].id
    version = aws_launch_template.vm_host[0].latest_version
  }

  tag {
    key                 = "boxer:deployment"
    value               = var.name
    propagate_at_launch = true
  }
}

# The controller (beside the coordinator, or wherever `boxer up` runs) lists the group's hosts
# (neither action has resource-level permissions) and reads the daemons' token.
data "aws_iam_policy_document" "controller_vm" {
  count = local.vm_enabled ? 1 : 0

  statement {
    sid       = "FindVmHosts"
    actions   = ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"]
    resources = ["*"]
  }

  statement {
    sid       = "ReadHostToken"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.vm_host_token[0].arn]
  }
}

resource "aws_iam_policy" "controller_vm" {
  count       = local.vm_enabled ? 1 : 0
  name        = "${var.name}-controller-vm"
  description = "Lets the boxer controller find the vm hosts of ${var.name}"
  policy      = data.aws_iam_policy_document.controller_vm[0].json
  tags        = local.tags
}

resource "aws_iam_role_policy_attachment" "coordinator_controller_vm" {
  count      = local.vm_enabled ? 1 : 0
  role       = aws_iam_role.coordinator.name
  policy_arn = aws_iam_policy.controller_vm[0].arn
}

variable "vm_host_count" {
  description = "How many vm hosts (the Auto Scaling group's size); 0: no vm tier, and `placement: vm` is refused by `boxer up`."
  type        = number
  default     = 0

  validation {
    condition     = var.vm_host_count >= 0 && var.vm_host_count <= 100 && floor(var.vm_host_count) == var.vm_host_count
    error_message = "vm_host_count must be a whole number from 0 to 100."
  }
}

variable "vm_host_instance_type" {
  description = "EC2 instance type of the vm hosts."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z0-9]+\\.[a-z0-9]+$", var.vm_host_instance_type))
    error_message = "Give an instance type like t3.small."
  }
}

variable "vm_host_port" {
  description = "TCP port of the host daemon (`boxer host serve`) on each vm host."
  type        = number
  default     = 7100

  validation {
    condition     = var.vm_host_port > 0 && var.vm_host_port < 65536
    error_message = "vm_host_port must be a TCP port (1-65535)."
  }
}

variable "vm_host_slots" {
  description = "Instances per vm host at once; 1 unless the services on it use distinct ports (an app binds its ports on the host's address)."
  type        = number
  default     = 1

  validation {
    condition     = var.vm_host_slots >= 1 && var.vm_host_slots <= 1000
    error_message = "vm_host_slots must be from 1 to 1000."
  }
}

output "vm_host_group" {
  description = "Auto Scaling group of the vm hosts (empty without a vm tier); the controller lists its instances."
  value       = local.vm_enabled ? aws_autoscaling_group.vm_host[0].name : ""
}

output "vm_host_port" {
  description = "Port of the host daemon on each vm host."
  value       = var.vm_host_port
}

output "vm_host_token_parameter_name" {
  description = "SSM SecureString holding the vm host daemons' token (empty without a vm tier); the controller reads it."
  value       = local.vm_enabled ? aws_ssm_parameter.vm_host_token[0].name : ""
}

output "controller_vm_policy_arn" {
  description = "IAM policy letting a controller outside the coordinator find the vm hosts (attach with controller_policy_arn)."
  value       = local.vm_enabled ? aws_iam_policy.controller_vm[0].arn : ""
}
