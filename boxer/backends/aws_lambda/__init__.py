"""AWS Lambda, both sides of it: the controller's (`backend`: Invoke; `preflight`: what `boxer up`
checks; `facts`: terraform's outputs) and the function's (`handler`: one invocation becomes one
instance; `secrets`: the instance token handed to its agent as a file); `event` is the contract
between the two. boto3 is imported only by the modules that call AWS, when they do."""
