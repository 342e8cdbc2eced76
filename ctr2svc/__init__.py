"""ctr2svc: container images as native, package-managed services.

The code follows a build's way through it, one package per stage:

- options/: a build's options as the command line, a project file or a compose file give them
  (BuildOptions), checked once into what the stages take (resolve() -> BuildRequest);
- image/: the image referenced, pulled into the cache through skopeo and unpacked (flat by umoci,
  or one shared layer at a time);
- service/: how it runs: the ServiceSpec planned from the request and the image, its OCI runtime
  config, seccomp profile, unit sandbox, private network and the unit or OpenRC script (the service
  helper those call is runtime/);
- package/: the .deb, .rpm or .apk nfpm packs, finished where nfpm cannot (hard links, rpm's
  header), with its names, versions and signatures;
- build/: the stages driven in order, shared layers' packages built alongside, the result placed;
- distribution/: what happens to packages afterwards: build records, summaries, repositories,
  `update`;
- apps/: many images at once: project files, compose applications and their NAME-stack package.

At the top: the command line (cli, commands/), errors, log, run (every subprocess), model (the
data the stages pass on), metadata (label and value checks), completion and inspect.
"""

__version__ = "0.1.0"
