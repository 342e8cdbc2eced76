# Part of ctr2svc's service helper (the same in every package): idmapped, read-only bind mounts of shared
# layers, for a service in a user namespace (userns.sh). perl, because the helper is POSIX sh and no
# shell tool makes an idmapped mount on every target: util-linux has X-mount.idmap only from 2.39
# (Debian 12 has 2.38), runc 1.1 does not idmap, python3 is not on every host, and a compiled program
# would be one per architecture. perl-base is Essential in Debian; its syscall() reaches the new mount
# API, whose numbers are the same on every architecture (open_tree 428, move_mount 429, mount_setattr
# 442). The user namespace that carries the mapping is a process of unshare(1) (util-linux, busybox),
# kept until the mounts are made.
#   perl idmap.pl START COUNT SOURCE TARGET [SOURCE TARGET ...]
# Each SOURCE appears at TARGET (an existing directory) with ids 0..COUNT-1 as START..START+COUNT-1.
use strict;
use warnings;

my ($start, $count, @pairs) = @ARGV;
die "usage: idmap.pl START COUNT SOURCE TARGET...\n" unless defined $count && @pairs && @pairs % 2 == 0;

pipe(my $reader, my $writer) or die "pipe: $!\n";
my $pid = fork() // die "fork: $!\n";
if ($pid == 0) {
    close $writer;
    open(STDIN, "<&", $reader) or die "stdin: $!\n";
    exec("unshare", "-U", "cat") or die "unshare: $!\n";
}
close $reader;
# Until the child is cat in a user namespace of its own (not unshare, not yet this one's).
my $own = readlink("/proc/self/ns/user");
my $ready = 0;
for (1 .. 5000) {
    my $ns = readlink("/proc/$pid/ns/user");
    my $exe = readlink("/proc/$pid/exe") // "";
    if (defined $ns && $ns ne $own && $exe =~ m{/cat$}) {
        $ready = 1;
        last;
    }
    select(undef, undef, undef, 0.002);
}
die "unshare -U did not start a user namespace\n" unless $ready;
for my $map ("uid_map", "gid_map") {
    open(my $fh, ">", "/proc/$pid/$map") or die "$map: $!\n";
    print $fh "0 $start $count\n";
    close $fh or die "$map: $!\n";
}
open(my $userns, "<", "/proc/$pid/ns/user") or die "user namespace: $!\n";

my ($AT_FDCWD, $AT_EMPTY_PATH, $OPEN_TREE_CLONE, $O_CLOEXEC) = (-100, 0x1000, 1, 0x80000);
my ($MOUNT_ATTR_RDONLY, $MOUNT_ATTR_IDMAP, $MOVE_MOUNT_F_EMPTY_PATH) = (0x1, 0x100000, 0x4);
my $empty = "";
# struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }: read-only, so that nothing
# (an rm -rf of the state directory, say) writes a shared layer through it.
my $attr = pack("QQQQ", $MOUNT_ATTR_RDONLY | $MOUNT_ATTR_IDMAP, 0, 0, fileno($userns));
while (my ($source, $target) = splice(@pairs, 0, 2)) {
    my $tree = syscall(428, $AT_FDCWD, $source, $OPEN_TREE_CLONE | $O_CLOEXEC);
    die "open_tree $source: $!\n" if $tree < 0;
    syscall(442, $tree, $empty, $AT_EMPTY_PATH, $attr, length($attr)) == 0
        or die "cannot idmap $source (mount_setattr: $!): the kernel needs idmapped mounts of its file system (Linux 5.12, overlayfs layers 5.19)\n";
    syscall(429, $tree, $empty, $AT_FDCWD, $target, $MOVE_MOUNT_F_EMPTY_PATH) == 0
        or die "move_mount $target: $!\n";
}
close $writer;
waitpid($pid, 0);
