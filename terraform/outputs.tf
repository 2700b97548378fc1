# The first four are what `boxer` reads (terraform output -json > outputs.json).

output "function_name" {
  description = "Name of the Lambda function the lambda backend invokes."
  value       = aws_lambda_function.this.function_name
}

output "coordinator_address" {
  description = "The coordinator's public address, ip:port, that agents register with."
  value       = "${aws_eip.coordinator.public_ip}:${var.coordinator_port}"
}

output "secret_parameter_name" {
  description = "SSM SecureString parameter holding the deployment secret (hex)."
  value       = aws_ssm_parameter.secret.name
}

output "region" {
  description = "AWS region of the deployment."
  value       = local.region
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "secret_parameter_arn" {
  description = "ARN of the deployment secret parameter."
  value       = aws_ssm_parameter.secret.arn
}

output "ecr_repository_url" {
  description = "Where to push the function image (docker push <url>:<image_tag>)."
  value       = aws_ecr_repository.this.repository_url
}

output "controller_policy_arn" {
  description = "IAM policy to attach to the user or role that runs `boxer up`."
  value       = aws_iam_policy.controller.arn
}

output "coordinator_instance_id" {
  description = "EC2 instance id of the coordinator (for SSM Session Manager or logs)."
  value       = aws_instance.coordinator.id
}
