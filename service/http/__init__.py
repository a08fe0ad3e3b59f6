"""HTTP surfaces of the service, one subpackage each."""
