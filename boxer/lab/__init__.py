"""The lab: Lambda's network (hosts behind real NAT routers) on one machine."""
