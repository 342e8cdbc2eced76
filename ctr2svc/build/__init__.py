"""The build: options in, package files out, driving the stages in order.

Resolve and pull the image (ctr2svc.image), unpack it and plan the service (ctr2svc.service), render
the service's files, pack them (ctr2svc.package) and place the result in the output directory.
"""
