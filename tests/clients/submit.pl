#!/usr/bin/perl
# One foreground job through Perl's Gearman::Client, to every server given:
#   perl submit.pl SERVERS TASK PAYLOAD    (SERVERS: host:port[,host:port...])
use strict;
use warnings;
use Gearman::Client;

my ($servers, $task, $payload) = @ARGV;
my $client = Gearman::Client->new(job_servers => [split /,/, $servers]);
my $result = $client->do_task($task, $payload, {timeout => 10});
if (!defined $result) {
    print STDERR "no result from any server\n";
    exit 1;
}
print $$result;
