"""Image files in and out, the sample images by name, and automatic measures of a result."""
