"""megadoc: data-efficient pre-training by scaling synthetic megadocs."""
