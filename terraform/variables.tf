variable "name" {
  description = "Name of the deployment; prefixes every resource (function, repository, roles, parameter)."
  type        = string
  default     = "boxer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.name))
    error_message = "The name must start with a letter and hold 1-40 characters of a-z, 0-9 and '-'."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

variable "image_tag" {
  description = "Tag of the function image in the module's ECR repository (push it before the second apply)."
  type        = string
  default     = "latest"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "The image tag must be a valid Docker tag (A-Z, a-z, 0-9, '_', '.', '-'; at most 128)."
  }
}

variable "image_uri" {
  description = "Full image URI for the function. Null uses <module ECR repository>:<image_tag>."
  type        = string
  default     = null
}

variable "memory_size" {
  description = "Memory of each function instance in MB (1769 MB is one vCPU)."
  type        = number
  default     = 1769

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "The memory size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout" {
  description = "Function timeout in seconds: the longest an instance lives. boxer drains it before this."
  type        = number
  default     = 900

  validation {
    condition     = var.timeout >= 30 && var.timeout <= 900 && floor(var.timeout) == var.timeout
    error_message = "The timeout must be a whole number of seconds between 30 and 900 (Lambda's cap)."
  }
}

variable "ephemeral_storage_size" {
  description = "Size of /tmp in MB, the only writable directory of an instance."
  type        = number
  default     = 512

  validation {
    condition     = var.ephemeral_storage_size >= 512 && var.ephemeral_storage_size <= 10240
    error_message = "The ephemeral storage size must be between 512 and 10240 MB."
  }
}

variable "reserved_concurrency" {
  description = "Concurrent executions reserved for the function; -1 leaves it unreserved (the account pool)."
  type        = number
  default     = -1

  validation {
    condition     = var.reserved_concurrency >= -1
    error_message = "The reserved concurrency must be -1 (unreserved), 0 (disabled) or more."
  }
}

variable "architecture" {
  description = "Instruction set of the function and of the image you push."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "The architecture must be x86_64 or arm64."
  }
}

variable "log_retention_days" {
  description = "Days to keep the function's logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "The log retention must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 3653)."
  }
}

variable "log_level" {
  description = "Application log level of the function (JSON logs)."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"], var.log_level)
    error_message = "The log level must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL."
  }
}

variable "coordinator_port" {
  description = "TCP port the coordinator listens on; its relay and NAT probes listen on the next one. The security group opens these two."
  type        = number
  default     = 7000

  validation {
    condition     = var.coordinator_port >= 1024 && var.coordinator_port <= 65535
    error_message = "The coordinator port must be between 1024 and 65535."
  }
}

variable "coordinator_allowed_cidrs" {
  description = "Sources allowed to reach the coordinator port. Lambda's public addresses are not published, so the default is everyone; the coordinator authenticates every agent with the deployment secret."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.coordinator_allowed_cidrs) > 0 && alltrue([for c in var.coordinator_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "Give at least one CIDR block, each like 0.0.0.0/0 or 198.51.100.0/24."
  }
}

variable "controller_port" {
  description = "TCP port of the controller's control API on the coordinator VM (TLS and a token; boxer up --controller)."
  type        = number
  default     = 7443

  validation {
    condition     = var.controller_port >= 1024 && var.controller_port <= 65535 && floor(var.controller_port) == var.controller_port
    error_message = "The controller port must be a whole number between 1024 and 65535."
  }
}

variable "controller_allowed_cidrs" {
  description = "Sources allowed to reach the controller port, e.g. [\"198.51.100.7/32\"] for your address. Empty (the default) keeps it closed."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.controller_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "Each entry must be a CIDR block like 198.51.100.7/32."
  }
}

variable "controller_image_uri" {
  description = "Full image URI of the controller (lambda_image/Dockerfile --target controller). Null uses <module ECR repository>:<image_tag>-controller."
  type        = string
  default     = null
}

variable "coordinator_instance_type" {
  description = "EC2 instance type of the coordinator."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\\.[a-z0-9]+$", var.coordinator_instance_type))
    error_message = "The instance type must look like t3.small."
  }
}

variable "coordinator_ami_ssm_parameter" {
  description = "Public SSM parameter naming the coordinator's AMI (Amazon Linux 2023 by default)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "subnet_id" {
  description = "Public subnet for the coordinator. Null uses the first subnet of the default VPC."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "The subnet id must look like subnet-0123abcd."
  }
}

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete the ECR repository even when it still holds images."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for the secret, the logs and the repository. Null uses AWS managed keys."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "The KMS key must be given as an ARN (arn:aws:kms:...)."
  }
}
