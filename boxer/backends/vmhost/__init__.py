"""The vm tier: a daemon on each vm host (`boxer host serve`, daemon.py) that starts and stops
instances for the controller, its protocol (protocol.py, sans-IO), and the controller's side
(tier.py: which host, launch, stop, exits; discovery.py: the hosts' addresses, from EC2 or a list).
"""
