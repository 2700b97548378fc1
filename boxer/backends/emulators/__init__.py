"""Local stand-ins for the AWS APIs we cannot reach in tests or on a laptop: the Invoke API
(`invoke_api`, what boto3 talks to through AWS_ENDPOINT_URL_LAMBDA), the Runtime API
(`runtime_api`, what awslambdaric talks to), and `lambda_local`, which runs the real handler
under both, as Lambda runs a function."""
