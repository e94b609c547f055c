"""titusctl: the operator CLI."""
