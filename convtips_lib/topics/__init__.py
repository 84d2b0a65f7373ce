"""topics: one module per lesson topic (zoo, blocks, imagenet, transfer, features, handcrafted, ...)."""
