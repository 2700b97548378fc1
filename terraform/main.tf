# boxer on AWS: the function image repository, the function that runs one instance per
# invocation, the coordinator VM with a fixed public address, the deployment secret, and the
# permissions - each role allowed exactly what it does.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region         = data.aws_region.current.id
  image_uri      = coalesce(var.image_uri, "${aws_ecr_repository.this.repository_url}:${var.image_tag}")
  secret_name    = "/${var.name}/deployment-secret"
  log_group_name = "/aws/lambda/${var.name}"
  subnet_id      = var.subnet_id != null ? var.subnet_id : data.aws_subnets.default[0].ids[0]
  tags           = merge({ "boxer:deployment" = var.name }, var.tags)
}

################################################################################
# Image repository
################################################################################

resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }

  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 20 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}

################################################################################
# Deployment secret: the coordinator, its relay and the controller hold it; an instance gets only
# its token derived from it, in its invocation's event (docs/security.md)
################################################################################

# Hex, as `boxer` reads it; random_bytes keeps it marked sensitive in the state.
resource "random_bytes" "secret" {
  length = 32
}

resource "aws_ssm_parameter" "secret" {
  name        = local.secret_name
  description = "boxer deployment secret (hex) for ${var.name}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_bytes.secret.hex
  tags        = local.tags
}

################################################################################
# The controller's control API: the token every call presents (made here, read by the
# coordinator VM and by the users allowed to run deployments) and the TLS certificate the VM
# makes at first boot and publishes here (its private key never leaves the VM)
################################################################################

resource "random_password" "control_token" {
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "control_token" {
  name        = "/${var.name}/control-token"
  description = "boxer controller's control API credential (bearer token) for ${var.name}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_password.control_token.result
  tags        = local.tags
}

resource "aws_ssm_parameter" "controller_certificate" {
  name        = "/${var.name}/controller-certificate"
  description = "boxer controller's TLS certificate (PEM, public), written by the coordinator VM at boot"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = "pending: the coordinator instance writes its certificate here at first boot"
  tags        = local.tags

  lifecycle {
    ignore_changes = [value] # the VM's to write
  }
}

################################################################################
# Function
################################################################################

resource "aws_cloudwatch_log_group" "function" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name}-function"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

# Least privilege: write its own log group. Nothing else, not even the deployment secret: each
# invocation's event carries its instance's token, so an app that takes over its function's
# credentials gets no secret.
data "aws_iam_policy_document" "function" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }
}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name}-function"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_117:Not in a VPC on purpose: VPC functions egress through a NAT Gateway (350 s idle timeout, per-GB cost) and boxer needs the plain Lambda NAT for hole punching.
  #checkov:skip=CKV_AWS_116:No dead-letter queue: an invocation that fails is relaunched by the controller, which tracks registrations; a DLQ would only collect stale events.
  #checkov:skip=CKV_AWS_272:Code signing applies to zip packages; this is a container image from the module's own immutable-tag ECR repository.
  #checkov:skip=CKV_AWS_50:X-Ray tracing has nothing to trace: an instance is one long-running process, not a request handler.
  #checkov:skip=CKV_AWS_115:Reserved concurrency is the user's choice (var.reserved_concurrency); by default the function shares the account pool.
  #checkov:skip=CKV_AWS_173:The only environment variables are non-secret settings; the function holds no secret (each event carries its instance's token).
  function_name = var.name
  description   = "boxer: each invocation runs one overlay instance"
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = local.image_uri
  architectures = [var.architecture]

  memory_size                    = var.memory_size
  timeout                        = var.timeout
  reserved_concurrent_executions = var.reserved_concurrency

  ephemeral_storage {
    size = var.ephemeral_storage_size
  }

  logging_config {
    log_format            = "JSON"
    log_group             = aws_cloudwatch_log_group.function.name
    application_log_level = var.log_level
    system_log_level      = "WARN"
  }

  environment {
    variables = {
      BOXER_DEPLOYMENT = var.name
    }
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy.function]
}

# An instance is relaunched by the controller, never by Lambda's own async retries.
resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = aws_lambda_function.this.function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}

################################################################################
# Controller permission: attach to whoever runs `boxer up`
################################################################################

data "aws_iam_policy_document" "controller" {
  statement {
    sid       = "LaunchInstances"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.this.arn, "${aws_lambda_function.this.arn}:*"]
  }

  statement {
    sid       = "ReadConcurrencyLimits"
    actions   = ["lambda:GetFunctionConcurrency", "lambda:GetFunctionConfiguration"]
    resources = [aws_lambda_function.this.arn]
  }

  # Without a reservation, the account's unreserved concurrency bounds the function; this call
  # has no resource-level permissions.
  statement {
    sid       = "ReadAccountConcurrency"
    actions   = ["lambda:GetAccountSettings"]
    resources = ["*"]
  }

  statement {
    sid       = "ReadDeploymentSecret"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.secret.arn]
  }
}

resource "aws_iam_policy" "controller" {
  name        = "${var.name}-controller"
  description = "Lets the boxer controller start instances of ${var.name}"
  policy      = data.aws_iam_policy_document.controller.json
  tags        = local.tags
}

# Whoever sends deployments to the controller on the coordinator VM (boxer up --controller)
# needs only its token and its certificate: no Lambda, no deployment secret.
data "aws_iam_policy_document" "control_client" {
  statement {
    sid       = "ReadControlCredential"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.control_token.arn, aws_ssm_parameter.controller_certificate.arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptControlCredential"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "control_client" {
  name        = "${var.name}-control-client"
  description = "Lets a user reach the boxer controller of ${var.name} (its token and certificate)"
  policy      = data.aws_iam_policy_document.control_client.json
  tags        = local.tags
}

################################################################################
# Coordinator: an EC2 instance with an Elastic IP, no L7 proxy in front, so it sees each
# function's NAT-mapped source address
################################################################################

data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = var.subnet_id == null ? 1 : 0
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }
}

data "aws_subnet" "coordinator" {
  id = local.subnet_id
}

data "aws_ssm_parameter" "coordinator_ami" {
  name = var.coordinator_ami_ssm_parameter
}

resource "aws_security_group" "coordinator" {
  name        = "${var.name}-coordinator"
  description = "boxer coordinator: its two TCP ports in, HTTPS out"
  vpc_id      = data.aws_subnet.coordinator.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "coordinator" {
  for_each          = toset(var.coordinator_allowed_cidrs)
  security_group_id = aws_security_group.coordinator.id
  description       = "boxer agents and controller"
  ip_protocol       = "tcp"
  from_port         = var.coordinator_port
  to_port           = var.coordinator_port
  cidr_ipv4         = each.value
}

# The relay and the NAT probe listen on the coordinator's port + 1 (RELAY_PORT_OFFSET in
# nat_traversal/defaults.py, which tests/test_terraform.py holds this to): without it relayed
# connections and `boxer probe-nat` cannot work.
resource "aws_vpc_security_group_ingress_rule" "relay" {
  for_each          = toset(var.coordinator_allowed_cidrs)
  security_group_id = aws_security_group.coordinator.id
  description       = "boxer relay and NAT probes"
  ip_protocol       = "tcp"
  from_port         = var.coordinator_port + 1
  to_port           = var.coordinator_port + 1
  cidr_ipv4         = each.value
}

# The controller's control API (TLS, and a token on every call): closed unless you name who may
# reach it (var.controller_allowed_cidrs, e.g. your address /32).
resource "aws_vpc_security_group_ingress_rule" "control" {
  for_each          = toset(var.controller_allowed_cidrs)
  security_group_id = aws_security_group.coordinator.id
  description       = "boxer control API (boxer up --controller)"
  ip_protocol       = "tcp"
  from_port         = var.controller_port
  to_port           = var.controller_port
  cidr_ipv4         = each.value
}

# Out: only HTTPS, for ECR (the images), SSM (the secret), Lambda (the controller's Invoke) and
# package mirrors. Agents connect in; the coordinator never dials them.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.coordinator.id
  description       = "ECR, SSM and package repositories"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "coordinator" {
  name               = "${var.name}-coordinator"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

# Pulling the function's image from ECR: the coordinator VM runs it, and so do the vm hosts
# (vm_hosts.tf), each policy adding what else its role may do.
data "aws_iam_policy_document" "pull_image" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # this action has no resource-level permissions
  }

  statement {
    sid       = "PullImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [aws_ecr_repository.this.arn]
  }
}

# The coordinator pulls the same image as the function and reads the secret.
data "aws_iam_policy_document" "coordinator" {
  source_policy_documents = [data.aws_iam_policy_document.pull_image.json]

  statement {
    sid       = "ReadDeploymentSecret"
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.secret.arn, aws_ssm_parameter.control_token.arn]
  }

  statement {
    sid       = "PublishControllerCertificate"
    actions   = ["ssm:PutParameter"]
    resources = [aws_ssm_parameter.controller_certificate.arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "EncryptDecryptParameters"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

# The controller beside the coordinator starts instances as `boxer up` would from a laptop.
resource "aws_iam_role_policy_attachment" "coordinator_controller" {
  role       = aws_iam_role.coordinator.name
  policy_arn = aws_iam_policy.controller.arn
}

resource "aws_iam_role_policy" "coordinator" {
  name   = "${var.name}-coordinator"
  role   = aws_iam_role.coordinator.id
  policy = data.aws_iam_policy_document.coordinator.json
}

# The controller's image: the same Dockerfile's `controller` target, pushed beside the function's.
locals {
  controller_image_uri = coalesce(var.controller_image_uri, "${aws_ecr_repository.this.repository_url}:${var.image_tag}-controller")
}

resource "aws_iam_instance_profile" "coordinator" {
  name = "${var.name}-coordinator"
  role = aws_iam_role.coordinator.name
  tags = local.tags
}

resource "aws_instance" "coordinator" {
  #checkov:skip=CKV_AWS_126:Detailed (1-minute) monitoring is a paid option the coordinator does not need; boxer exports its own metrics.
  #checkov:skip=CKV2_AWS_41:An IAM role is attached through aws_iam_instance_profile.coordinator (checkov cannot follow the profile).
  ami                         = data.aws_ssm_parameter.coordinator_ami.insecure_value
  instance_type               = var.coordinator_instance_type
  subnet_id                   = local.subnet_id
  vpc_security_group_ids      = [aws_security_group.coordinator.id]
  iam_instance_profile        = aws_iam_instance_profile.coordinator.name
  ebs_optimized               = true
  user_data_replace_on_change = true

  user_data = templatefile("${path.module}/templates/coordinator-user-data.sh.tftpl", {
    region                = local.region
    registry              = split("/", aws_ecr_repository.this.repository_url)[0]
    image                 = local.image_uri
    controller_image      = local.controller_image_uri
    secret_parameter      = aws_ssm_parameter.secret.name
    token_parameter       = aws_ssm_parameter.control_token.name
    certificate_parameter = aws_ssm_parameter.controller_certificate.name
    parameter_key         = coalesce(var.kms_key_arn, "alias/aws/ssm")
    function_name         = aws_lambda_function.this.function_name
    port                  = var.coordinator_port
    control_port          = var.controller_port
    # The vm tier's group by its name, not by a reference: the hosts' user data names the
    # coordinator's address, so a reference back would be a cycle (tests/test_terraform.py
    # holds the two to the same name).
    vm_host_group = local.vm_enabled ? "${var.name}-vm-hosts" : ""
    vm_host_port  = var.vm_host_port
    # The vm hosts' token parameter, by its name too (vm_hosts.tf makes it).
    vm_host_token_parameter = local.vm_enabled ? "/${var.name}/vm-host-token" : ""
  })

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = 16
  }

  tags = merge(local.tags, { Name = "${var.name}-coordinator" })
}

resource "aws_eip" "coordinator" {
  domain   = "vpc"
  instance = aws_instance.coordinator.id
  tags     = merge(local.tags, { Name = "${var.name}-coordinator" })
}
