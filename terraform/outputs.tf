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

output "controller_address" {
  description = "The controller's control API, ip:port (boxer up FILE --controller ...); reachable from controller_allowed_cidrs."
  value       = "${aws_eip.coordinator.public_ip}:${var.controller_port}"
}

output "controller_token_parameter_name" {
  description = "SSM SecureString parameter holding the control API's token (--controller-token-file)."
  value       = aws_ssm_parameter.control_token.name
}

output "controller_certificate_parameter_name" {
  description = "SSM parameter holding the controller's TLS certificate, written at its first boot (--controller-ca)."
  value       = aws_ssm_parameter.controller_certificate.name
}

output "controller_server_name" {
  description = "The name the controller's certificate is for (--controller-server-name)."
  value       = "boxer-controller"
}

output "control_client_policy_arn" {
  description = "IAM policy to attach to whoever runs boxer up --controller (reads the token and the certificate)."
  value       = aws_iam_policy.control_client.arn
}
