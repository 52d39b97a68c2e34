<?php
// One foreground job through PHP's gearman extension (libgearman), to every server given:
//   php submit.php SERVERS TASK PAYLOAD    (SERVERS: host:port[,host:port...])
// addServers(..., false): without it the extension asks each server to send exceptions as it
// is added, and one server that is down makes the call throw ("Failed to set exception
// option") and leaves the client unusable. Without it, libgearman fails over at each job.
$client = new GearmanClient();
$client->addServers($argv[1], false);
$client->setTimeout(10000);
$result = $client->doNormal($argv[2], $argv[3]);
if ($client->returnCode() != GEARMAN_SUCCESS) {
    fwrite(STDERR, $client->error() . "\n");
    exit(1);
}
echo $result;
